/*
 * connect-flood: a benchmark's load of new connections through a node's conntrack, nothing else.
 *   connect-flood tcp HOST PORT SECONDS CONCURRENCY
 *     TCP connections to HOST PORT as fast as it can, CONCURRENCY at a time, each reset
 *     (SO_LINGER 0) as soon as it is established;
 *   connect-flood udp HOST PORT SECONDS RATE
 *     RATE datagrams a second, each to the next port from PORT on (a new flow each: conntrack
 *     keys UDP by ports too); past port 65535 from another socket (another source port), so
 *     that every datagram is a new flow.
 *   connect-flood serve PORT SECONDS
 *     accepts TCP connections on PORT (both families) and closes each at once, for SECONDS: the
 *     other end of `tcp`, which a server slower to accept than the kernel is to connect would
 *     turn into a measure of itself (its listen queue overflows, and a client waits a second to
 *     send its SYN again).
 * Prints one JSON line: {"connections":N,"failures":N,"seconds":S}.
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

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int flood_udp(struct sockaddr_storage *target, socklen_t length, int first_port, double seconds, double rate) {
  if (seconds <= 0 || rate <= 0 || first_port < 1 || first_port > 65535) {
    fprintf(stderr, "SECONDS > 0, RATE > 0, PORT 1 to 65535\n");
    return 2;
  }
  int sockets[16], current = 0;
  for (int i = 0; i < 16; i++) sockets[i] = socket(target->ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  long sent = 0, failures = 0;
  int port = first_port;
  double begin = now(), end = begin + seconds;
  for (;;) {
    double t = now();
    if (t >= end) break;
    long due = (long)((t - begin) * rate);
    if (sent + failures >= due) {
      struct timespec pause = {0, 200000};
      nanosleep(&pause, NULL);
      continue;
    }
    while (sent + failures < due) {
      if (target->ss_family == AF_INET) ((struct sockaddr_in *)target)->sin_port = htons((unsigned short)port);
      else ((struct sockaddr_in6 *)target)->sin6_port = htons((unsigned short)port);
      if (sendto(sockets[current], "x", 1, 0, (struct sockaddr *)target, length) == 1) sent++;
      else failures++;
      if (port == 65535) current = (current + 1) % 16;
      port = port == 65535 ? first_port : port + 1;
    }
  }
  printf("{\"connections\":%ld,\"failures\":%ld,\"seconds\":%.3f}\n", sent, failures, now() - begin);
  return 0;
}

static int serve(int port, double seconds) {
  int fd = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int off = 0, on = 1;
  setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  struct sockaddr_in6 local = {.sin6_family = AF_INET6, .sin6_port = htons((unsigned short)port), .sin6_addr = IN6ADDR_ANY_INIT};
  if (bind(fd, (struct sockaddr *)&local, sizeof local) < 0 || listen(fd, 65535) < 0) {
    fprintf(stderr, "cannot listen on port %d: %s\n", port, strerror(errno));
    return 2;
  }
  int epoll = epoll_create1(0);
  struct epoll_event wanted = {.events = EPOLLIN, .data.fd = fd}, ready;
  epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &wanted);
  long accepted = 0;
  double begin = now();
  printf("ready\n");
  fflush(stdout);
  while (now() - begin < seconds) {
    if (epoll_wait(epoll, &ready, 1, 100) <= 0) continue;
    for (;;) {
      int client = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
      if (client < 0) break;
      close(client);
      accepted++;
    }
  }
  printf("{\"connections\":%ld,\"failures\":0,\"seconds\":%.3f}\n", accepted, now() - begin);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 4 && strcmp(argv[1], "serve") == 0) return serve(atoi(argv[2]), atof(argv[3]));
  if (argc != 6 || (strcmp(argv[1], "tcp") && strcmp(argv[1], "udp"))) {
    fprintf(stderr, "usage: connect-flood tcp HOST PORT SECONDS CONCURRENCY | connect-flood udp HOST PORT SECONDS RATE\n");
    return 2;
  }
  int udp = strcmp(argv[1], "udp") == 0;
  argv++;
  struct sockaddr_storage target = {0};
  socklen_t target_length;
  struct sockaddr_in *v4 = (struct sockaddr_in *)&target;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&target;
  int port = atoi(argv[2]);
  if (inet_pton(AF_INET, argv[1], &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons((unsigned short)port);
    target_length = sizeof *v4;
  } else if (inet_pton(AF_INET6, argv[1], &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((unsigned short)port);
    target_length = sizeof *v6;
  } else {
    fprintf(stderr, "not an address: %s\n", argv[1]);
    return 2;
  }
  double seconds = atof(argv[3]);
  if (udp) return flood_udp(&target, target_length, port, seconds, atof(argv[4]));
  int concurrency = atoi(argv[4]);
  if (seconds <= 0 || concurrency < 1 || concurrency > 4096) {
    fprintf(stderr, "SECONDS > 0, CONCURRENCY 1 to 4096\n");
    return 2;
  }
  int epoll = epoll_create1(0);
  long connections = 0, failures = 0;
  int open_now = 0;
  double begin = now(), end = begin + seconds;
  struct linger reset = {.l_onoff = 1, .l_linger = 0};
  struct epoll_event events[256];
  for (;;) {
    double t = now();
    if (t >= end) break;
    while (open_now < concurrency) {
      int fd = socket(target.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) {
        failures++;
        break;
      }
      setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
      if (connect(fd, (struct sockaddr *)&target, target_length) < 0 && errno != EINPROGRESS) {
        failures++;
        close(fd);
        break;
      }
      struct epoll_event wanted = {.events = EPOLLOUT, .data.fd = fd};
      epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &wanted);
      open_now++;
    }
    int ready = epoll_wait(epoll, events, 256, 5);
    for (int i = 0; i < ready; i++) {
      int fd = events[i].data.fd, error = 0;
      socklen_t length = sizeof error;
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length);
      if (error || (events[i].events & (EPOLLERR | EPOLLHUP))) failures++;
      else connections++;
      close(fd);
      open_now--;
    }
  }
  printf("{\"connections\":%ld,\"failures\":%ld,\"seconds\":%.3f}\n", connections, failures, now() - begin);
  return 0;
}
