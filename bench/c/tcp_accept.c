/* The stateful benches' TCP server in C: st_tcp.py's SERVER (accept, close, for a
 * lifetime), for the C client's rates. argv: address, port, lifetime (s). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s address port lifetime\n", argv[0]);
		return 2;
	}
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
	if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
		fprintf(stderr, "bad address %s\n", argv[1]);
		return 2;
	}
	double end = now() + atof(argv[3]);
	int one = 1;
	int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (s < 0 || setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(s, (struct sockaddr *)&addr, sizeof(addr)) || listen(s, 4096)) {
		perror("listen");
		return 1;
	}
	while (now() < end) {
		struct pollfd p = {.fd = s, .events = POLLIN};
		if (poll(&p, 1, 500) <= 0)
			continue;
		for (;;) { /* every connection queued, then back to poll */
			int c = accept4(s, NULL, NULL, SOCK_NONBLOCK);
			if (c < 0)
				break;
			close(c);
		}
	}
	return 0;
}
