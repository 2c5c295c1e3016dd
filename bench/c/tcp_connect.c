/* The stateful benches' TCP client in C: st_tcp.py's CLIENT, argument for argument and
 * with the same JSON answer, for rates the Python client cannot reach (it tops out at
 * 12-14k connections/s on this machine kind, below the datapath's own rate).
 *
 * argv: dst, port, count, seconds, concurrency, first source port, gap (s), timeout (s).
 * Keeps `concurrency` connections in flight (non-blocking connect, epoll); each binds
 * the next source port of its range (one taken by another socket is skipped), is
 * counted when writable without error, and is closed with an RST (SO_LINGER 0: no
 * TIME_WAIT). With a gap, one connection at a time, `gap` seconds apart.
 * Prints {"ok", "failed", "start" (CLOCK_MONOTONIC, s: several clients' runs are
 * combined), "elapsed" (first connect to last completion, s),
 * "times" (connect times of the successful connections, s, in completion order)}.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONC 4096

struct slot {
	int fd;
	int sport;
	double start;
};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void nap(double s)
{
	struct timespec ts = {(time_t)s, (long)((s - (time_t)s) * 1e9)};
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

int main(int argc, char **argv)
{
	if (argc != 9) {
		fprintf(stderr, "usage: %s dst port count seconds concurrency sport gap timeout\n", argv[0]);
		return 2;
	}
	struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
	if (inet_pton(AF_INET, argv[1], &dst.sin_addr) != 1) {
		fprintf(stderr, "bad address %s\n", argv[1]);
		return 2;
	}
	long count = atol(argv[3]);
	double seconds = atof(argv[4]);
	int conc = atoi(argv[5]);
	long sport = atol(argv[6]);
	double gap = atof(argv[7]), timeout = atof(argv[8]);
	if (count < 0 || conc < 1 || conc > MAX_CONC || sport < 1 || sport + count > 65536) {
		fprintf(stderr, "count, concurrency (1..%d) or source ports out of range\n", MAX_CONC);
		return 2;
	}
	if (gap > 0)
		conc = 1;
	double *times = malloc(sizeof(double) * (count ? count : 1));
	static struct slot slots[MAX_CONC];
	int free_slots[MAX_CONC], nfree = conc;
	for (int i = 0; i < conc; i++) {
		free_slots[i] = conc - 1 - i;
		slots[i].fd = -1;
	}
	int ep = epoll_create1(0);
	if (!times || ep < 0) {
		perror("setup");
		return 1;
	}
	struct linger lin = {1, 0};
	int one = 1;
	long launched = 0, ok = 0, failed = 0;
	int slow[64], nslow = 0; /* source ports of connections slower than 0.5 s */
	double t0 = now(), end = t0 + seconds, last = t0;
	for (;;) {
		double t = now();
		while (nfree > 0 && launched < count && t < end) {
			int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
			if (fd < 0) {
				perror("socket");
				return 1;
			}
			setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
			setsockopt(fd, SOL_SOCKET, SO_LINGER, &lin, sizeof(lin));
			struct sockaddr_in src = {.sin_family = AF_INET, .sin_port = htons(sport + launched)};
			launched++;
			if (bind(fd, (struct sockaddr *)&src, sizeof(src))) {
				close(fd); /* a port another socket holds: the next one */
				continue;
			}
			double start = now();
			if (connect(fd, (struct sockaddr *)&dst, sizeof(dst)) && errno != EINPROGRESS) {
				failed++;
				close(fd);
				continue;
			}
			int i = free_slots[--nfree];
			slots[i] = (struct slot){fd, (int)(sport + launched - 1), start};
			struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = i};
			epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
			if (gap > 0)
				break;
		}
		if (nfree == conc && (launched >= count || t >= end))
			break;
		struct epoll_event evs[256];
		int n = epoll_wait(ep, evs, 256, 50);
		for (int e = 0; e < n; e++) {
			int i = evs[e].data.u32;
			struct slot *s = &slots[i];
			double done = now();
			int err = 0;
			socklen_t len = sizeof(err);
			getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
			if (!err) {
				if (done - s->start > 0.5 && nslow < 64)
					slow[nslow++] = s->sport;
				times[ok++] = done - s->start;
				last = done;
			} else {
				failed++;
			}
			close(s->fd); /* leaves the epoll set with it */
			s->fd = -1;
			free_slots[nfree++] = i;
			if (gap > 0)
				nap(gap);
		}
		t = now();
		for (int i = 0; i < conc; i++) {
			struct slot *s = &slots[i];
			if (s->fd >= 0 && t - s->start > timeout) {
				close(s->fd);
				s->fd = -1;
				free_slots[nfree++] = i;
				failed++;
			}
		}
	}
	printf("{\"ok\": %ld, \"failed\": %ld, \"start\": %.9f, \"elapsed\": %.9f, \"times\": [",
	       ok, failed, t0, last - t0);
	for (long i = 0; i < ok; i++)
		printf(i ? ", %.9f" : "%.9f", times[i]);
	printf("], \"slow_ports\": [");
	for (int i = 0; i < nslow; i++)
		printf(i ? ", %d" : "%d", slow[i]);
	printf("]}\n");
	return 0;
}
