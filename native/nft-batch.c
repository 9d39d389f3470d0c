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
 * and lists the namespace's tables instead (see list_tables()); with --counters FAMILY TABLE, a
 * table's named counters (see list_counters()); with --nflog GROUP, the packets logged to an nflog
 * group, a line each (see nflog()); with --conntrack EVENTS, conntrack's events, a line each (see
 * conntrack()).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_log.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <linux/netfilter/nf_conntrack_common.h>
#include <linux/netlink.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/uio.h>
#include <time.h>
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

/* A table family's number from nft's name; -1 for one Trellis writes no table in. */
static int family_number(const char *name) {
  if (strcmp(name, "inet") == 0) return NFPROTO_INET;
  if (strcmp(name, "ip") == 0) return NFPROTO_IPV4;
  if (strcmp(name, "ip6") == 0) return NFPROTO_IPV6;
  return -1;
}

/* Appends one attribute (header, value, padding) to a request being built. */
static size_t put_attribute(unsigned char *at, unsigned short type, const void *value, size_t length) {
  struct nlattr attribute = {.nla_len = (unsigned short)(NLA_HDRLEN + length), .nla_type = type};
  memcpy(at, &attribute, sizeof attribute);
  memcpy(at + NLA_HDRLEN, value, length);
  size_t padded = NLA_ALIGN(NLA_HDRLEN + length);
  memset(at + NLA_HDRLEN + length, 0, padded - NLA_HDRLEN - length);
  return padded;
}

/* The first attribute of `type` among those from `attribute` over `length` bytes; NULL if none. */
static const struct nlattr *find_attribute(const struct nlattr *attribute, int length, unsigned short type) {
  for (; length >= (int)sizeof *attribute && attribute->nla_len >= sizeof *attribute && attribute->nla_len <= length;
       length -= NLA_ALIGN(attribute->nla_len), attribute = (const struct nlattr *)((const char *)attribute + NLA_ALIGN(attribute->nla_len))) {
    if ((attribute->nla_type & NLA_TYPE_MASK) == type) return attribute;
  }
  return NULL;
}

static unsigned long long be64_at(const struct nlattr *attribute) {
  if (!attribute || attribute->nla_len < NLA_HDRLEN + 8) return 0;
  const unsigned char *bytes = (const unsigned char *)attribute + NLA_HDRLEN;
  unsigned long long value = 0;
  for (int i = 0; i < 8; i++) value = value << 8 | bytes[i];
  return value;
}

/*
 * Sends a dump request (its sequence number set here) and hands each message of the answer to
 * `each`; a dump overtaken by a change is taken again, after `restart`. Returns 0 when the dump
 * ended, 1 when the kernel answered ENOENT (nothing to list), 2 when it could not (said on
 * stderr, about `what`).
 */
static int dump(int fd, unsigned char *request, size_t length, const char *what, void (*restart)(void *), int (*each)(const struct nlmsghdr *, void *), void *context) {
  static unsigned char answer[1 << 16];
  struct nlmsghdr *header = (struct nlmsghdr *)request;
  for (int attempt = 0; attempt < 10; attempt++) {
    restart(context);
    header->nlmsg_seq = (unsigned)attempt + 1;
    int interrupted = 0, done = 0;
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    if (sendto(fd, request, length, 0, (struct sockaddr *)&kernel, sizeof kernel) != (ssize_t)length) {
      fprintf(stderr, "cannot ask for the %s: %s\n", what, strerror(errno));
      return 2;
    }
    while (!done) {
      ssize_t got = recv(fd, answer, sizeof answer, 0);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        fprintf(stderr, "cannot read the %s: %s\n", what, got < 0 ? strerror(errno) : "the socket closed");
        return 2;
      }
      int left = (int)got;
      for (struct nlmsghdr *reply = (struct nlmsghdr *)answer; NLMSG_OK(reply, (unsigned)left); reply = NLMSG_NEXT(reply, left)) {
        if (reply->nlmsg_seq != (unsigned)attempt + 1) continue;
        if (reply->nlmsg_flags & NLM_F_DUMP_INTR) interrupted = 1;
        if (reply->nlmsg_type == NLMSG_DONE) {
          done = 1;
          break;
        }
        if (reply->nlmsg_type == NLMSG_ERROR) {
          const struct nlmsgerr *error = NLMSG_DATA(reply);
          if (error->error == -ENOENT) return 1;
          fprintf(stderr, "the kernel did not list the %s: %s\n", what, strerror(-error->error));
          return 2;
        }
        if (reply->nlmsg_len < NLMSG_LENGTH(sizeof(struct nfgenmsg))) continue;
        if (each(reply, context) < 0) return 2;
      }
    }
    if (!interrupted) return 0;
  }
  fprintf(stderr, "the %s kept changing while they were listed\n", what);
  return 2;
}

/* The lines a listing writes, gathered until its dump ends whole. */
struct lines {
  char text[1 << 22];
  size_t used;
};

static void clear_lines(void *context) {
  ((struct lines *)context)->used = 0;
}

/* Appends one printf-formatted line; -1 (said) when the listing outgrows its room. */
static int add_line(struct lines *lines, const char *format, ...) __attribute__((format(printf, 2, 3)));
static int add_line(struct lines *lines, const char *format, ...) {
  va_list arguments;
  va_start(arguments, format);
  int written = vsnprintf(lines->text + lines->used, sizeof lines->text - lines->used, format, arguments);
  va_end(arguments);
  if (written < 0 || (size_t)written >= sizeof lines->text - lines->used) {
    fprintf(stderr, "the listing is larger than %zu bytes\n", sizeof lines->text);
    return -1;
  }
  lines->used += (size_t)written;
  return 0;
}

static struct lines listing;

/* The attributes of a message of nf_tables: those after its nfgenmsg, and how many bytes they take. */
static const struct nlattr *attributes_of(const struct nlmsghdr *message, int *length) {
  const struct nfgenmsg *body = NLMSG_DATA(message);
  *length = (int)message->nlmsg_len - NLMSG_LENGTH(sizeof(struct nfgenmsg));
  return (const struct nlattr *)((const char *)body + NLMSG_ALIGN(sizeof *body));
}

static int table_line(const struct nlmsghdr *message, void *context) {
  const char *family = family_name(((const struct nfgenmsg *)NLMSG_DATA(message))->nfgen_family);
  int length;
  const struct nlattr *attributes = attributes_of(message, &length);
  const struct nlattr *name = find_attribute(attributes, length, NFTA_TABLE_NAME);
  if (!family || !name) return 0;
  const char *text = (const char *)name + NLA_HDRLEN;
  size_t text_length = strnlen(text, name->nla_len - NLA_HDRLEN);
  if (!plain_name(text, text_length)) return 0;
  return add_line(context, "%s %.*s\n", family, (int)text_length, text);
}

/*
 * --tables: one line "FAMILY NAME" per table of the namespace, from one netlink dump of the
 * tables alone. (`nft list tables` reads every chain, rule and set first: more than 30 s at
 * 10,000 Services.) A table whose family or name nft could not print as a word is left out.
 * Exit 0 listed, 2 cannot.
 */
static int list_tables(void) {
  int fd = open_socket_or_say();
  if (fd < 0) return 2;
  struct {
    struct nlmsghdr header;
    struct nfgenmsg message;
  } request = {
      .header = {.nlmsg_len = sizeof request, .nlmsg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE, .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP},
      .message = {.nfgen_family = NFPROTO_UNSPEC, .version = NFNETLINK_V0},
  };
  int status = dump(fd, (unsigned char *)&request, sizeof request, "tables", clear_lines, table_line, &listing);
  if (status == 2) return 2;
  return write_full(1, listing.text, status == 1 ? 0 : listing.used) < 0 ? 2 : 0;
}

/* The table whose counters are listed, for counter_line. */
static const char *counters_table;

static int counter_line(const struct nlmsghdr *message, void *context) {
  int length;
  const struct nlattr *attributes = attributes_of(message, &length);
  const struct nlattr *owner = find_attribute(attributes, length, NFTA_OBJ_TABLE);
  const struct nlattr *name = find_attribute(attributes, length, NFTA_OBJ_NAME);
  const struct nlattr *data = find_attribute(attributes, length, NFTA_OBJ_DATA);
  if (!owner || !name || !data) return 0;
  const char *owner_name = (const char *)owner + NLA_HDRLEN;
  if (strnlen(owner_name, owner->nla_len - NLA_HDRLEN) != strlen(counters_table) || strncmp(owner_name, counters_table, owner->nla_len - NLA_HDRLEN) != 0) return 0;
  const char *text = (const char *)name + NLA_HDRLEN;
  size_t text_length = strnlen(text, name->nla_len - NLA_HDRLEN);
  if (!plain_name(text, text_length)) return 0;
  const struct nlattr *fields = (const struct nlattr *)((const char *)data + NLA_HDRLEN);
  int fields_length = (int)data->nla_len - NLA_HDRLEN;
  unsigned long long packets = be64_at(find_attribute(fields, fields_length, NFTA_COUNTER_PACKETS));
  unsigned long long bytes = be64_at(find_attribute(fields, fields_length, NFTA_COUNTER_BYTES));
  return add_line(context, "%.*s %llu %llu\n", (int)text_length, text, packets, bytes);
}

/*
 * --counters FAMILY TABLE: one line "NAME PACKETS BYTES" per named counter of the table, from
 * one netlink dump of its counter objects (nothing else of the ruleset is read). No such table:
 * nothing listed. Exit 0 listed, 2 cannot.
 */
static int list_counters(const char *family_text, const char *table) {
  int family = family_number(family_text);
  size_t table_length = strlen(table);
  if (family < 0 || !plain_name(table, table_length)) {
    fprintf(stderr, "--counters takes a table family (inet, ip, ip6) and a table name\n");
    return 2;
  }
  int fd = open_socket_or_say();
  if (fd < 0) return 2;
  unsigned char request[512] = {0};
  struct nlmsghdr *header = (struct nlmsghdr *)request;
  struct nfgenmsg *message = (struct nfgenmsg *)NLMSG_DATA(header);
  message->nfgen_family = (unsigned char)family;
  message->version = NFNETLINK_V0;
  size_t length = NLMSG_LENGTH(sizeof *message);
  length += put_attribute(request + length, NFTA_OBJ_TABLE, table, table_length + 1);
  const unsigned char type[4] = {0, 0, 0, NFT_OBJECT_COUNTER}; /* a big-endian u32 */
  length += put_attribute(request + length, NFTA_OBJ_TYPE, type, sizeof type);
  header->nlmsg_len = (unsigned)length;
  header->nlmsg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETOBJ;
  header->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  counters_table = table;
  int status = dump(fd, request, length, "counters", clear_lines, counter_line, &listing);
  if (status == 2) return 2;
  return write_full(1, listing.text, status == 1 ? 0 : listing.used) < 0 ? 2 : 0;
}

/* A value in network byte order, whatever the host's. */
static uint32_t be32(uint32_t value) {
  const unsigned char bytes[4] = {(unsigned char)(value >> 24), (unsigned char)(value >> 16), (unsigned char)(value >> 8), (unsigned char)value};
  uint32_t out;
  memcpy(&out, bytes, sizeof out);
  return out;
}

static uint16_t be16(uint16_t value) {
  const unsigned char bytes[2] = {(unsigned char)(value >> 8), (unsigned char)value};
  uint16_t out;
  memcpy(&out, bytes, sizeof out);
  return out;
}

/* Sends one nflog configuration message for `group` and waits for its acknowledgement; 0, or -1 with a message. */
static int nflog_config(int fd, unsigned group, unsigned short type, const void *value, size_t length) {
  unsigned char request[128] = {0};
  struct nlmsghdr *header = (struct nlmsghdr *)request;
  struct nfgenmsg *message = (struct nfgenmsg *)NLMSG_DATA(header);
  message->nfgen_family = AF_UNSPEC;
  message->version = NFNETLINK_V0;
  message->res_id = be16((uint16_t)group);
  size_t used = NLMSG_LENGTH(sizeof *message);
  used += put_attribute(request + used, type, value, length);
  header->nlmsg_len = (unsigned)used;
  header->nlmsg_type = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG;
  header->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
  static unsigned seq;
  header->nlmsg_seq = ++seq;
  struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
  if (sendto(fd, request, used, 0, (struct sockaddr *)&kernel, sizeof kernel) != (ssize_t)used) {
    fprintf(stderr, "cannot configure nflog group %u: %s\n", group, strerror(errno));
    return -1;
  }
  unsigned char answer[4096];
  for (;;) {
    ssize_t got = recv(fd, answer, sizeof answer, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      fprintf(stderr, "no answer to the configuration of nflog group %u: %s\n", group, got < 0 ? strerror(errno) : "the socket closed");
      return -1;
    }
    int left = (int)got;
    for (struct nlmsghdr *reply = (struct nlmsghdr *)answer; NLMSG_OK(reply, (unsigned)left); reply = NLMSG_NEXT(reply, left)) {
      if (reply->nlmsg_type != NLMSG_ERROR || reply->nlmsg_seq != seq) continue;
      const struct nlmsgerr *error = NLMSG_DATA(reply);
      if (error->error == 0) return 0;
      fprintf(stderr, "the kernel refused the configuration of nflog group %u: %s%s\n", group, strerror(-error->error),
              error->error == -EBUSY || error->error == -EPERM ? " (another process of this network namespace may have bound it)" : "");
      return -1;
    }
  }
}

/* Writes `bytes` as lowercase hex, without separators. */
static void hex(char *out, const unsigned char *bytes, size_t length) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < length; i++) {
    out[2 * i] = digits[bytes[i] >> 4];
    out[2 * i + 1] = digits[bytes[i] & 15];
  }
  out[2 * length] = 0;
}

/*
 * --nflog GROUP: binds nflog group GROUP of this network namespace and writes one line per packet
 * the kernel logs there (`log group GROUP` statements), at once:
 *   PREFIX FAMILY PROTOCOL SOURCE SPORT DESTINATION DPORT
 * FAMILY 4 or 6, PROTOCOL its number, addresses as hex bytes, ports 0 for a protocol without
 * them. A packet that is not whole enough to read (or of another family) is left out. Runs until
 * its input or output closes; exit 2 when it cannot bind the group.
 */
static int nflog(const char *group_text) {
  char *end = NULL;
  unsigned long group = strtoul(group_text, &end, 10);
  if (!*group_text || *end || group > 65535) {
    fprintf(stderr, "--nflog takes a group number, 0 to 65535\n");
    return 2;
  }
  int fd = open_socket_or_say();
  if (fd < 0) return 2;
  int size = 1 << 22;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
  const struct nfulnl_msg_config_cmd bind_command = {.command = NFULNL_CFG_CMD_BIND};
  /* The network header and the ports after it: 40 bytes of IPv6 and 4 of ports, rounded up. */
  const struct nfulnl_msg_config_mode mode = {.copy_range = be32(64), .copy_mode = NFULNL_COPY_PACKET};
  const unsigned char one[4] = {0, 0, 0, 1};
  if (nflog_config(fd, (unsigned)group, NFULA_CFG_CMD, &bind_command, sizeof bind_command) < 0) return 2;
  if (nflog_config(fd, (unsigned)group, NFULA_CFG_MODE, &mode, sizeof mode) < 0) return 2;
  /* Each packet as it comes, not gathered for up to a second. */
  if (nflog_config(fd, (unsigned)group, NFULA_CFG_QTHRESH, one, sizeof one) < 0) return 2;
  static unsigned char answer[1 << 16];
  char line[512];
  for (;;) {
    /* Its input ends when whoever started it goes (even by kill -9): the group is let go at once. */
    struct pollfd waiting[2] = {{.fd = fd, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
    if (poll(waiting, 2, -1) < 0) {
      if (errno == EINTR) continue;
      fprintf(stderr, "cannot wait for nflog group %lu: %s\n", group, strerror(errno));
      return 2;
    }
    if (waiting[1].revents) {
      char byte;
      ssize_t read_now = read(0, &byte, 1);
      if (read_now <= 0) return 0;
    }
    if (!(waiting[0].revents & POLLIN)) continue;
    ssize_t got = recv(fd, answer, sizeof answer, 0);
    if (got < 0 && (errno == EINTR || errno == ENOBUFS)) continue; /* ENOBUFS: some were lost; go on */
    if (got <= 0) {
      fprintf(stderr, "cannot read nflog group %lu: %s\n", group, got < 0 ? strerror(errno) : "the socket closed");
      return 2;
    }
    int left = (int)got;
    for (struct nlmsghdr *message = (struct nlmsghdr *)answer; NLMSG_OK(message, (unsigned)left); message = NLMSG_NEXT(message, left)) {
      if (message->nlmsg_type != ((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET)) continue;
      if (message->nlmsg_len < NLMSG_LENGTH(sizeof(struct nfgenmsg))) continue;
      const struct nfgenmsg *packet = NLMSG_DATA(message);
      int length = (int)message->nlmsg_len - NLMSG_LENGTH(sizeof(struct nfgenmsg));
      const struct nlattr *attributes = (const struct nlattr *)((const char *)packet + NLMSG_ALIGN(sizeof *packet));
      const struct nlattr *prefix = find_attribute(attributes, length, NFULA_PREFIX);
      const struct nlattr *payload = find_attribute(attributes, length, NFULA_PAYLOAD);
      if (!prefix || !payload) continue;
      const char *prefix_text = (const char *)prefix + NLA_HDRLEN;
      size_t prefix_length = strnlen(prefix_text, prefix->nla_len - NLA_HDRLEN);
      if (!plain_name(prefix_text, prefix_length)) continue;
      const unsigned char *bytes = (const unsigned char *)payload + NLA_HDRLEN;
      size_t size_left = payload->nla_len - NLA_HDRLEN;
      int family;
      size_t address_length, l4;
      unsigned protocol;
      const unsigned char *source, *destination;
      if (size_left >= 20 && bytes[0] >> 4 == 4) {
        family = 4;
        address_length = 4;
        l4 = (size_t)(bytes[0] & 15) * 4;
        protocol = bytes[9];
        source = bytes + 12;
        destination = bytes + 16;
      } else if (size_left >= 40 && bytes[0] >> 4 == 6) {
        family = 6;
        address_length = 16;
        l4 = 40;
        protocol = bytes[6];
        source = bytes + 8;
        destination = bytes + 24;
      } else {
        continue;
      }
      unsigned sport = 0, dport = 0;
      if ((protocol == 6 || protocol == 17 || protocol == 132) && size_left >= l4 + 4) {
        sport = (unsigned)bytes[l4] << 8 | bytes[l4 + 1];
        dport = (unsigned)bytes[l4 + 2] << 8 | bytes[l4 + 3];
      }
      char from[33], to[33];
      hex(from, source, address_length);
      hex(to, destination, address_length);
      int written = snprintf(line, sizeof line, "%.*s %d %u %s %u %s %u\n", (int)prefix_length, prefix_text, family, protocol, from, sport, to, dport);
      if (written < 0 || (size_t)written >= sizeof line) continue;
      if (write_full(1, line, (size_t)written) < 0) return 0;
    }
  }
}

/*
 * One conntrack event as --conntrack writes it: CONNTRACK_RECORD bytes, in this machine's byte
 * order but for the addresses (network order, as on the wire), field by field:
 *   0 kind (1 new, 2 update, 3 destroy; 255: the kernel dropped events, the rest zero)
 *   1 family (4 or 6)   2 protocol   3 zero
 *   4 status (u32)   8 id (u32)
 *   12 source port, 14 destination port, 16 reply source port, 18 reply destination port (u16 each)
 *   20 source, 36 destination, 52 reply source, 68 reply destination (16 bytes each; IPv4 in the first 4)
 *   84 packets, 92 bytes of the original direction, 100 packets, 108 bytes of the reply (u64 each)
 */
#define CONNTRACK_RECORD 116
/* How long the conntrack reader lets events gather once one came (see conntrack()). */
#define GATHER_NS 5000000

/* The addresses and ports of one conntrack tuple (CTA_TUPLE_ORIG or CTA_TUPLE_REPLY) into `record` at `at` (ports) and `address_at`; 0 when it is not whole. */
static int read_tuple(const struct nlattr *nested, int family, unsigned char *record, size_t ports_at, size_t address_at, unsigned *protocol) {
  if (!nested) return 0;
  const struct nlattr *inside = (const struct nlattr *)((const char *)nested + NLA_HDRLEN);
  int length = nested->nla_len - NLA_HDRLEN;
  const struct nlattr *ip = find_attribute(inside, length, CTA_TUPLE_IP);
  const struct nlattr *proto = find_attribute(inside, length, CTA_TUPLE_PROTO);
  if (!ip || !proto) return 0;
  const struct nlattr *ips = (const struct nlattr *)((const char *)ip + NLA_HDRLEN);
  int ips_length = ip->nla_len - NLA_HDRLEN;
  size_t size = family == 4 ? 4 : 16;
  const struct nlattr *source = find_attribute(ips, ips_length, family == 4 ? CTA_IP_V4_SRC : CTA_IP_V6_SRC);
  const struct nlattr *destination = find_attribute(ips, ips_length, family == 4 ? CTA_IP_V4_DST : CTA_IP_V6_DST);
  if (!source || !destination || source->nla_len < NLA_HDRLEN + size || destination->nla_len < NLA_HDRLEN + size) return 0;
  memcpy(record + address_at, (const unsigned char *)source + NLA_HDRLEN, size);
  memcpy(record + address_at + 16, (const unsigned char *)destination + NLA_HDRLEN, size);
  const struct nlattr *protos = (const struct nlattr *)((const char *)proto + NLA_HDRLEN);
  int protos_length = proto->nla_len - NLA_HDRLEN;
  const struct nlattr *number = find_attribute(protos, protos_length, CTA_PROTO_NUM);
  if (!number || number->nla_len < NLA_HDRLEN + 1) return 0;
  *protocol = *((const unsigned char *)number + NLA_HDRLEN);
  uint16_t sport = 0, dport = 0;
  const struct nlattr *sport_attribute = find_attribute(protos, protos_length, CTA_PROTO_SRC_PORT);
  const struct nlattr *dport_attribute = find_attribute(protos, protos_length, CTA_PROTO_DST_PORT);
  if (sport_attribute && dport_attribute && sport_attribute->nla_len >= NLA_HDRLEN + 2 && dport_attribute->nla_len >= NLA_HDRLEN + 2) {
    const unsigned char *s = (const unsigned char *)sport_attribute + NLA_HDRLEN, *d = (const unsigned char *)dport_attribute + NLA_HDRLEN;
    sport = (uint16_t)(s[0] << 8 | s[1]);
    dport = (uint16_t)(d[0] << 8 | d[1]);
  }
  memcpy(record + ports_at, &sport, 2);
  memcpy(record + ports_at + 2, &dport, 2);
  return 1;
}

/* A counter of CTA_COUNTERS_ORIG or _REPLY (packets or bytes); 0 when the node does not count (nf_conntrack_acct). */
static unsigned long long read_counter(const struct nlattr *nested, unsigned short type) {
  if (!nested) return 0;
  return be64_at(find_attribute((const struct nlattr *)((const char *)nested + NLA_HDRLEN), nested->nla_len - NLA_HDRLEN, type));
}

static unsigned read_be32(const struct nlattr *attribute) {
  if (!attribute || attribute->nla_len < NLA_HDRLEN + 4) return 0;
  const unsigned char *bytes = (const unsigned char *)attribute + NLA_HDRLEN;
  return (unsigned)bytes[0] << 24 | (unsigned)bytes[1] << 16 | (unsigned)bytes[2] << 8 | bytes[3];
}

/* One event message as a record; 0 when it is not one to write. */
static int conntrack_record(const struct nlmsghdr *message, unsigned char *record) {
  if (NFNL_SUBSYS_ID(message->nlmsg_type) != NFNL_SUBSYS_CTNETLINK) return 0;
  unsigned type = NFNL_MSG_TYPE(message->nlmsg_type);
  if (message->nlmsg_len < NLMSG_LENGTH(sizeof(struct nfgenmsg))) return 0;
  const struct nfgenmsg *header = NLMSG_DATA(message);
  int family = header->nfgen_family == AF_INET ? 4 : header->nfgen_family == AF_INET6 ? 6 : 0;
  if (!family) return 0;
  int length = (int)message->nlmsg_len - NLMSG_LENGTH(sizeof(struct nfgenmsg));
  const struct nlattr *attributes = (const struct nlattr *)((const char *)header + NLA_ALIGN(sizeof *header));
  unsigned status = read_be32(find_attribute(attributes, length, CTA_STATUS));
  unsigned char kind;
  if (type == IPCTNL_MSG_CT_DELETE) kind = 3;
  else if (type != IPCTNL_MSG_CT_NEW) return 0;
  else if (message->nlmsg_flags & (NLM_F_CREATE | NLM_F_EXCL)) kind = 1;
  else if ((status & IPS_SEEN_REPLY) && !(status & IPS_ASSURED)) kind = 2;
  else return 0;
  memset(record, 0, CONNTRACK_RECORD);
  unsigned protocol = 0, reply_protocol = 0;
  if (!read_tuple(find_attribute(attributes, length, CTA_TUPLE_ORIG), family, record, 12, 20, &protocol)) return 0;
  if (!read_tuple(find_attribute(attributes, length, CTA_TUPLE_REPLY), family, record, 16, 52, &reply_protocol)) return 0;
  record[0] = kind;
  record[1] = (unsigned char)family;
  record[2] = (unsigned char)protocol;
  unsigned id = read_be32(find_attribute(attributes, length, CTA_ID));
  memcpy(record + 4, &status, 4);
  memcpy(record + 8, &id, 4);
  const struct nlattr *counters_original = find_attribute(attributes, length, CTA_COUNTERS_ORIG);
  const struct nlattr *counters_reply = find_attribute(attributes, length, CTA_COUNTERS_REPLY);
  unsigned long long counters[4] = {read_counter(counters_original, CTA_COUNTERS_PACKETS), read_counter(counters_original, CTA_COUNTERS_BYTES),
                                    read_counter(counters_reply, CTA_COUNTERS_PACKETS), read_counter(counters_reply, CTA_COUNTERS_BYTES)};
  memcpy(record + 84, counters, sizeof counters);
  return 1;
}

/*
 * --conntrack EVENTS (a comma-separated list of new, update and destroy): listens to those
 * conntrack events of this network namespace and writes one CONNTRACK_RECORD-byte record per
 * event (see above): the original tuple, the reply tuple (a DNAT shows as a reply source other
 * than the original destination), the counters of each direction (0 unless the namespace counts
 * them), the status bits and conntrack's id of the connection. Binary, not lines: a busy node
 * makes tens of thousands a second, and the agent reads them without parsing text. Of the update
 * events only the one that says a connection was first answered is written (its status has
 * SEEN_REPLY but not yet ASSURED): a TCP connection makes five or more, one per state. When the
 * kernel had to drop events because this reader fell behind, a record of kind 255 says so.
 * Once an event comes, the reader waits 5 ms for more, then takes them up to 64 at a time and
 * writes their records together. Runs until its input or output closes.
 */
static int conntrack(const char *events) {
  unsigned groups = 0;
  char list[64];
  if (strlen(events) >= sizeof list) events = "";
  strcpy(list, events);
  for (char *save = NULL, *event = strtok_r(list, ",", &save); event; event = strtok_r(NULL, ",", &save)) {
    if (strcmp(event, "new") == 0) groups |= 1u << (NFNLGRP_CONNTRACK_NEW - 1);
    else if (strcmp(event, "update") == 0) groups |= 1u << (NFNLGRP_CONNTRACK_UPDATE - 1);
    else if (strcmp(event, "destroy") == 0) groups |= 1u << (NFNLGRP_CONNTRACK_DESTROY - 1);
    else groups = 0, event = NULL;
    if (!event) break;
  }
  if (!groups) {
    fprintf(stderr, "--conntrack takes a comma-separated list of new, update and destroy\n");
    return 2;
  }
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
  struct sockaddr_nl local = {.nl_family = AF_NETLINK, .nl_groups = groups};
  if (fd < 0 || bind(fd, (struct sockaddr *)&local, sizeof local) < 0) {
    fprintf(stderr, "cannot listen to conntrack events: %s\n", strerror(errno));
    return 2;
  }
  /* Room for a burst of some 20,000 events while the agent reads the ones before. */
  int size = 1 << 24;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) < 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  enum { BATCH = 64, MESSAGE = 2048 };
  static unsigned char buffers[BATCH][MESSAGE];
  static struct iovec vectors[BATCH];
  static struct mmsghdr messages[BATCH];
  for (int i = 0; i < BATCH; i++) {
    vectors[i] = (struct iovec){.iov_base = buffers[i], .iov_len = MESSAGE};
    messages[i].msg_hdr = (struct msghdr){.msg_iov = &vectors[i], .msg_iovlen = 1};
  }
  static unsigned char out[1 << 16];
  size_t used = 0;
  for (;;) {
    struct pollfd waiting[2] = {{.fd = fd, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
    if (poll(waiting, 2, -1) < 0) {
      if (errno == EINTR) continue;
      fprintf(stderr, "cannot wait for conntrack events: %s\n", strerror(errno));
      return 2;
    }
    if (waiting[1].revents) {
      char byte;
      if (read(0, &byte, 1) <= 0) return 0;
    }
    if (!(waiting[0].revents & POLLIN)) continue;
    /*
     * Events come one at a time; woken for each, this reader would pay a wake-up, a read and a
     * write (and the agent a wake-up) per event. It lets them gather for a moment instead, and
     * takes what came in batches: a record is at most this much later.
     */
    struct timespec gather = {0, GATHER_NS};
    nanosleep(&gather, NULL);
    /* Everything waiting, then one write. */
    for (;;) {
      int got = recvmmsg(fd, messages, BATCH, MSG_DONTWAIT, NULL);
      if (got < 0 && errno == EINTR) continue;
      if (got < 0 && errno == ENOBUFS) {
        if (sizeof out - used < CONNTRACK_RECORD) {
          if (write_full(1, out, used) < 0) return 0;
          used = 0;
        }
        memset(out + used, 0, CONNTRACK_RECORD);
        out[used] = 255;
        used += CONNTRACK_RECORD;
        continue;
      }
      if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      if (got <= 0) {
        fprintf(stderr, "cannot read conntrack events: %s\n", got < 0 ? strerror(errno) : "the socket closed");
        return 2;
      }
      for (int i = 0; i < got; i++) {
        int left = (int)messages[i].msg_len;
        for (struct nlmsghdr *message = (struct nlmsghdr *)buffers[i]; NLMSG_OK(message, (unsigned)left); message = NLMSG_NEXT(message, left)) {
          if (sizeof out - used < CONNTRACK_RECORD) {
            if (write_full(1, out, used) < 0) return 0;
            used = 0;
          }
          if (conntrack_record(message, out + used)) used += CONNTRACK_RECORD;
        }
      }
      if (got < BATCH) break;
    }
    if (used) {
      if (write_full(1, out, used) < 0) return 0;
      used = 0;
    }
  }
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--serve") == 0) return serve();
  if (argc == 2 && strcmp(argv[1], "--tables") == 0) return list_tables();
  if (argc == 4 && strcmp(argv[1], "--counters") == 0) return list_counters(argv[2], argv[3]);
  if (argc == 3 && strcmp(argv[1], "--nflog") == 0) return nflog(argv[2]);
  if (argc == 3 && strcmp(argv[1], "--conntrack") == 0) return conntrack(argv[2]);
  if (argc != 1) {
    fprintf(stderr, "usage: trellis-nft-batch [--serve | --tables | --counters FAMILY TABLE | --nflog GROUP | --conntrack EVENTS] (a batch on stdin, unless one of those)\n");
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
