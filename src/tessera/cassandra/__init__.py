"""Apache Cassandra as a tessera component: installed by `scripts/install.sh` (the
server's jars from Maven Central), run as plain JVM child processes with a generated
`cassandra.yaml`, one loopback address per node, and reached with the DataStax
`cassandra-driver`. The lab starts a cluster on request (`lab up --cassandra N`), the
tests start their own, and the agent can keep flow state in it.
"""
