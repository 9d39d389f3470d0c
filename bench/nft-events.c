/*
 * nft-events: prints each nftables rule and set element the kernel reports added in this network namespace, as
 * one line of hexadecimal (the netlink message), as soon as it arrives. bench/svc.ts uses it to
 * see a change's DNAT rule go live; `nft monitor` would do, but it reads the whole ruleset before
 * it reports anything, minutes at 10,000 Services, on a CPU the measurement needs.
 * It prints "ready" once subscribed, and runs until killed.
 */
#include <errno.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(void) {
  int fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER);
  if (fd < 0) {
    perror("socket");
    return 1;
  }
  struct sockaddr_nl local = {.nl_family = AF_NETLINK, .nl_groups = 1u << (NFNLGRP_NFTABLES - 1)};
  int size = 64 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
  if (bind(fd, (struct sockaddr *)&local, sizeof local) < 0) {
    perror("bind");
    return 1;
  }
  printf("ready\n");
  fflush(stdout);
  static unsigned char buffer[1 << 20];
  for (;;) {
    ssize_t got = recv(fd, buffer, sizeof buffer, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      /* ENOBUFS: events were lost; say so and go on. */
      printf("lost %s\n", strerror(errno));
      fflush(stdout);
      continue;
    }
    int length = (int)got;
    for (struct nlmsghdr *message = (struct nlmsghdr *)buffer; NLMSG_OK(message, (unsigned)length); message = NLMSG_NEXT(message, length)) {
      /* Rules, and set elements: kube-proxy puts a Service's endpoints in an anonymous map of its rule. */
      int type = message->nlmsg_type & 0xff;
      if ((type != NFT_MSG_NEWRULE && type != NFT_MSG_NEWSETELEM) || message->nlmsg_type >> 8 != NFNL_SUBSYS_NFTABLES) continue;
      const unsigned char *bytes = (const unsigned char *)message;
      for (unsigned i = 0; i < message->nlmsg_len; i++) printf("%02x", bytes[i]);
      printf("\n");
    }
    fflush(stdout);
  }
}
