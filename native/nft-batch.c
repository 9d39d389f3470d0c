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
 * With --serve it takes batch after batch instead (see serve()); with --tables it writes nothing
 * and lists the namespace's tables instead (see list_tables()).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
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

/* The netfilter netlink socket, opened once. -1 (with a message) when it cannot be. */
static int open_socket(char *why, size_t why_size) {
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
  if (fd < 0) {
    snprintf(why, why_size, "cannot open a netfilter netlink socket: %s", strerror(errno));
    return -1;
  }
  struct sockaddr_nl local = {.nl_family = AF_NETLINK};
  if (bind(fd, (struct sockaddr *)&local, sizeof local) < 0) {
    snprintf(why, why_size, "cannot bind the netlink socket: %s", strerror(errno));
    close(fd);
    return -1;
  }
  return fd;
}

/* open_socket, saying on stderr why it could not. */
static int open_socket_or_say(void) {
  char why[256];
  int fd = open_socket(why, sizeof why);
  if (fd < 0) fprintf(stderr, "%s\n", why);
  return fd;
}

/*
 * Sends one batch and collects the kernel's refusals into `why` ("" when it took the batch).
 * Returns 0 (applied), 1 (refused) or 2 (not sent).
 */
static int apply(int fd, const unsigned char *batch, size_t length, char *why, size_t why_size) {
  why[0] = 0;
  if (!well_formed(batch, length)) {
    snprintf(why, why_size, "the input is not one nftables batch (whole netlink messages from BATCH_BEGIN to BATCH_END)");
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
    snprintf(why, why_size, "cannot send the batch (%zu bytes): %s", length, sent < 0 ? strerror(errno) : "short write");
    return 2;
  }
  /* The kernel has processed the batch when sendto returns: its refusals are queued already. */
  static unsigned char answer[1 << 16];
  int refused = 0;
  size_t used = 0;
  for (;;) {
    ssize_t got = recv(fd, answer, sizeof answer, MSG_DONTWAIT);
    if (got < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      snprintf(why, why_size, "cannot read the kernel's answer: %s", strerror(errno));
      return 1;
    }
    if (got == 0) break;
    int left = (int)got;
    for (struct nlmsghdr *message = (struct nlmsghdr *)answer; NLMSG_OK(message, (unsigned)left); message = NLMSG_NEXT(message, left)) {
      if (message->nlmsg_type != NLMSG_ERROR) continue;
      const struct nlmsgerr *error = NLMSG_DATA(message);
      if (error->error == 0) continue;
      if (used < why_size) used += (size_t)snprintf(why + used, why_size - used, "%smessage %u: %s", refused ? "; " : "", error->msg.nlmsg_seq, strerror(-error->error));
      refused = 1;
    }
  }
  return refused;
}

static int read_full(int fd, void *buffer, size_t length) {
  size_t done = 0;
  while (done < length) {
    ssize_t got = read(fd, (char *)buffer + done, length - done);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return -1;
    done += (size_t)got;
  }
  return 0;
}

static int write_full(int fd, const void *buffer, size_t length) {
  size_t done = 0;
  while (done < length) {
    ssize_t put = write(fd, (const char *)buffer + done, length - done);
    if (put < 0 && errno == EINTR) continue;
    if (put <= 0) return -1;
    done += (size_t)put;
  }
  return 0;
}

/*
 * --serve: batch after batch on one socket, for as long as stdin stays open. A process that
 * has written to nf_tables waits about 10 ms in its exit for the kernel to release the socket;
 * a writer that stays does not pay it for every change.
 * Request: length (32-bit big-endian), then the batch. Answer: status (0, 1 or 2 as the exit
 * codes below), length, then the reason ("" when applied).
 */
static int serve(void) {
  char why[4096];
  int fd = open_socket_or_say();
  if (fd < 0) return 2;
  unsigned char *batch = NULL;
  size_t capacity = 0;
  for (;;) {
    unsigned char header[4];
    if (read_full(0, header, 4) < 0) return 0;
    uint32_t length = (uint32_t)header[0] << 24 | (uint32_t)header[1] << 16 | (uint32_t)header[2] << 8 | header[3];
    if (length > MAX_BATCH) {
      fprintf(stderr, "a batch of %u bytes is larger than %u\n", length, MAX_BATCH);
      return 2;
    }
    if (length > capacity) {
      unsigned char *grown = realloc(batch, length);
      if (!grown) {
        fprintf(stderr, "no memory for a batch of %u bytes\n", length);
        return 2;
      }
      batch = grown;
      capacity = length;
    }
    if (read_full(0, batch, length) < 0) return 2;
    int status = apply(fd, batch, length, why, sizeof why);
    uint32_t reason = (uint32_t)strlen(why);
    unsigned char answer[8] = {0, 0, 0, (unsigned char)status, (unsigned char)(reason >> 24), (unsigned char)(reason >> 16), (unsigned char)(reason >> 8), (unsigned char)reason};
    if (write_full(1, answer, 8) < 0 || write_full(1, why, reason) < 0) return 2;
  }
}

/* nft's name for a table family; NULL for one it has none for. */
static const char *family_name(unsigned family) {
  switch (family) {
    case NFPROTO_INET: return "inet";
    case NFPROTO_IPV4: return "ip";
    case NFPROTO_ARP: return "arp";
    case NFPROTO_NETDEV: return "netdev";
    case NFPROTO_BRIDGE: return "bridge";
    case NFPROTO_IPV6: return "ip6";
    default: return NULL;
  }
}

/* Whether a table name is one nft could print as a word: [A-Za-z0-9_./-], at most 255 bytes. */
static int plain_name(const char *name, size_t length) {
  if (length == 0 || length > 255) return 0;
  for (size_t i = 0; i < length; i++) {
    char c = name[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '/' || c == '-')) return 0;
  }
  return 1;
}

/*
 * --tables: one line "FAMILY NAME" per table of the namespace, from one netlink dump of the
 * tables alone. (`nft list tables` reads every chain, rule and set first: more than 30 s at
 * 10,000 Services.) A table whose family or name nft could not print as a word is left out.
 * A dump overtaken by a change is taken again. Exit 0 listed, 2 cannot.
 */
static int list_tables(void) {
  int fd = open_socket_or_say();
  if (fd < 0) return 2;
  static unsigned char answer[1 << 16];
  static char out[1 << 20];
  for (int attempt = 0; attempt < 10; attempt++) {
    size_t used = 0;
    int interrupted = 0, done = 0;
    struct {
      struct nlmsghdr header;
      struct nfgenmsg message;
    } request = {
        .header = {.nlmsg_len = sizeof request, .nlmsg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE, .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP, .nlmsg_seq = (unsigned)attempt + 1},
        .message = {.nfgen_family = NFPROTO_UNSPEC, .version = NFNETLINK_V0},
    };
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    if (sendto(fd, &request, sizeof request, 0, (struct sockaddr *)&kernel, sizeof kernel) != (ssize_t)sizeof request) {
      fprintf(stderr, "cannot ask for the tables: %s\n", strerror(errno));
      return 2;
    }
    while (!done) {
      ssize_t got = recv(fd, answer, sizeof answer, 0);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        fprintf(stderr, "cannot read the tables: %s\n", got < 0 ? strerror(errno) : "the socket closed");
        return 2;
      }
      int left = (int)got;
      for (struct nlmsghdr *message = (struct nlmsghdr *)answer; NLMSG_OK(message, (unsigned)left); message = NLMSG_NEXT(message, left)) {
        if (message->nlmsg_seq != (unsigned)attempt + 1) continue;
        if (message->nlmsg_flags & NLM_F_DUMP_INTR) interrupted = 1;
        if (message->nlmsg_type == NLMSG_DONE) {
          done = 1;
          break;
        }
        if (message->nlmsg_type == NLMSG_ERROR) {
          const struct nlmsgerr *error = NLMSG_DATA(message);
          fprintf(stderr, "the kernel did not list the tables: %s\n", strerror(-error->error));
          return 2;
        }
        if (message->nlmsg_len < NLMSG_LENGTH(sizeof(struct nfgenmsg))) continue;
        const struct nfgenmsg *table = NLMSG_DATA(message);
        const char *family = family_name(table->nfgen_family);
        int length = (int)message->nlmsg_len - NLMSG_LENGTH(sizeof(struct nfgenmsg));
        const struct nlattr *attribute = (const struct nlattr *)((const char *)table + NLMSG_ALIGN(sizeof *table));
        for (; length >= (int)sizeof *attribute && attribute->nla_len >= sizeof *attribute && attribute->nla_len <= length;
             length -= NLA_ALIGN(attribute->nla_len), attribute = (const struct nlattr *)((const char *)attribute + NLA_ALIGN(attribute->nla_len))) {
          if ((attribute->nla_type & NLA_TYPE_MASK) != NFTA_TABLE_NAME) continue;
          const char *name = (const char *)attribute + NLA_HDRLEN;
          size_t name_length = strnlen(name, attribute->nla_len - NLA_HDRLEN);
          if (!family || !plain_name(name, name_length)) break;
          if (used + name_length + 16 > sizeof out) {
            fprintf(stderr, "the namespace holds more tables than %zu bytes of names\n", sizeof out);
            return 2;
          }
          used += (size_t)snprintf(out + used, sizeof out - used, "%s %.*s\n", family, (int)name_length, name);
          break;
        }
      }
    }
    if (!interrupted) return write_full(1, out, used) < 0 ? 2 : 0;
  }
  fprintf(stderr, "the tables kept changing while they were listed\n");
  return 2;
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--serve") == 0) return serve();
  if (argc == 2 && strcmp(argv[1], "--tables") == 0) return list_tables();
  if (argc != 1) {
    fprintf(stderr, "usage: trellis-nft-batch [--serve | --tables] (a batch on stdin, unless --tables)\n");
    return 2;
  }
  size_t length = 0;
  unsigned char *batch = read_batch(&length);
  if (!batch) return 2;
  int fd = open_socket_or_say();
  if (fd < 0) return 2;
  char why[4096];
  int status = apply(fd, batch, length, why, sizeof why);
  if (why[0]) fprintf(stderr, "%s\n", why);
  return status;
}
