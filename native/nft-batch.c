/*
 * trellis-nft-batch: hands one nftables netlink batch to the kernel, as `nft -f` would after
 * building it, but without first reading the whole ruleset back (nft 1.0.6 dumps every chain
 * of the namespace before each change: 0.6 s at 10,000 Services).
 *
 * stdin: the batch, as bytes: BATCH_BEGIN, the nftables messages, BATCH_END, each a complete
 * nlmsghdr message with its sequence number (src/linux/nft-netlink.ts builds them). The kernel applies the batch whole or not at all, and answers only for the
 * messages it refused (no message asks for an acknowledgement), by the time sendmsg returns.
 * Exit 0: applied. Exit 1: refused; stderr says which message (by sequence number) and why.
 * Exit 2: not sent (bad input, no socket). It acts in the network namespace it runs in.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_BATCH (256u << 20)

/* Reads all of stdin; NULL (with a message) when it cannot or it is too large. */
static unsigned char *read_batch(size_t *length) {
  size_t capacity = 1 << 16, used = 0;
  unsigned char *bytes = malloc(capacity);
  if (!bytes) return NULL;
  for (;;) {
    if (used == capacity) {
      if (capacity >= MAX_BATCH) {
        fprintf(stderr, "the batch is larger than %u bytes\n", MAX_BATCH);
        return NULL;
      }
      capacity *= 2;
      unsigned char *grown = realloc(bytes, capacity);
      if (!grown) {
        fprintf(stderr, "no memory for a batch of %zu bytes\n", capacity);
        return NULL;
      }
      bytes = grown;
    }
    ssize_t got = read(0, bytes + used, capacity - used);
    if (got == 0) break;
    if (got < 0) {
      if (errno == EINTR) continue;
      fprintf(stderr, "cannot read the batch: %s\n", strerror(errno));
      return NULL;
    }
    used += (size_t)got;
  }
  *length = used;
  return bytes;
}

/* Whether the bytes are whole netlink messages, the first a batch begin and the last a batch end. */
static int well_formed(const unsigned char *bytes, size_t length) {
  size_t offset = 0;
  const struct nlmsghdr *first = NULL, *last = NULL;
  while (offset < length) {
    if (length - offset < sizeof(struct nlmsghdr)) return 0;
    const struct nlmsghdr *message = (const struct nlmsghdr *)(bytes + offset);
    if (message->nlmsg_len < sizeof(struct nlmsghdr) || message->nlmsg_len > length - offset || message->nlmsg_len % 4) return 0;
    if (!first) first = message;
    last = message;
    offset += message->nlmsg_len;
  }
  return first && last && first != last && first->nlmsg_type == NFNL_MSG_BATCH_BEGIN && last->nlmsg_type == NFNL_MSG_BATCH_END;
}

int main(void) {
  size_t length = 0;
  unsigned char *batch = read_batch(&length);
  if (!batch) return 2;
  if (!well_formed(batch, length)) {
    fprintf(stderr, "the input is not one nftables batch (whole netlink messages from BATCH_BEGIN to BATCH_END)\n");
    return 2;
  }
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
  if (fd < 0) {
    fprintf(stderr, "cannot open a netfilter netlink socket: %s\n", strerror(errno));
    return 2;
  }
  struct sockaddr_nl local = {.nl_family = AF_NETLINK};
  if (bind(fd, (struct sockaddr *)&local, sizeof local) < 0) {
    fprintf(stderr, "cannot bind the netlink socket: %s\n", strerror(errno));
    return 2;
  }
  /* The whole batch goes in one message, and every refusal must fit in the answer queue. */
  int size = (int)(length + (1 << 20));
  setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size);
  setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
  struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
  ssize_t sent;
  do sent = sendto(fd, batch, length, 0, (struct sockaddr *)&kernel, sizeof kernel);
  while (sent < 0 && errno == EINTR);
  if (sent < 0 || (size_t)sent != length) {
    fprintf(stderr, "cannot send the batch (%zu bytes): %s\n", length, sent < 0 ? strerror(errno) : "short write");
    return 2;
  }
  /* The kernel has processed the batch when sendto returns: its refusals are queued already. */
  static unsigned char answer[1 << 16];
  int refused = 0;
  for (;;) {
    ssize_t got = recv(fd, answer, sizeof answer, MSG_DONTWAIT);
    if (got < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      fprintf(stderr, "cannot read the kernel's answer: %s\n", strerror(errno));
      return 1;
    }
    if (got == 0) break;
    for (struct nlmsghdr *message = (struct nlmsghdr *)answer; NLMSG_OK(message, (unsigned)got); message = NLMSG_NEXT(message, got)) {
      if (message->nlmsg_type != NLMSG_ERROR) continue;
      const struct nlmsgerr *error = NLMSG_DATA(message);
      if (error->error == 0) continue;
      fprintf(stderr, "message %u: %s\n", error->msg.nlmsg_seq, strerror(-error->error));
      refused = 1;
    }
  }
  return refused;
}
