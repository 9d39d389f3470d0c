/*
 * trellis-cni: the CNI plugin a runtime execs for type "trellis". It hands the call (the CNI_*
 * environment, PATH, and stdin byte for byte) to the node's trellis agent over a unix socket
 * and prints the agent's answer, so a pod pays neither Node.js start-up nor a Go runtime's.
 * When no agent listens it runs the full plugin installed beside it, trellis-standalone, with
 * the same environment and stdin.
 *
 * Messages both ways are a 4-byte big-endian length and that many bytes of JSON:
 *   request  {"env": {NAME: VALUE, ...}, "stdin": TEXT}
 *   reply    {"exitCode": N, "stdout": TEXT, "stderr": TEXT}
 * Of the network configuration it reads only the top-level "agentSocket" and "cniVersion".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "buf.h"

#define DEFAULT_SOCKET "/run/trellis/cni.sock"
#define STANDALONE "trellis-standalone"
/* The agent refuses larger requests; the plugin does not send them. */
#define MAX_MESSAGE (1 << 20)
/* Replies carry a pod's result and messages: far below this. */
#define MAX_REPLY (16 << 20)
#define CONNECT_TIMEOUT_S 2
/* How long the agent gets to answer one call (a runtime's own timeout is usually longer). */
#define REPLY_TIMEOUT_S 300
#define VERSION_REPLY "{\"cniVersion\":\"1.1.0\",\"supportedVersions\":[\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\",\"1.1.0\"]}\n"

extern char **environ;


static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

/* A JSON string literal of `n` bytes: quotes, backslashes and control bytes escaped, the rest as is. */
static void put_json_string(struct buf *b, const char *s, size_t n) {
  put(b, "\"", 1);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') {
      char esc[2] = {'\\', (char)c};
      put(b, esc, 2);
    } else if (c < 0x20 || c == 0x7f) {
      char esc[8];
      snprintf(esc, sizeof esc, "\\u%04x", c);
      put(b, esc, 6);
    } else {
      put(b, &s[i], 1);
    }
  }
  put(b, "\"", 1);
}

/* ---- errors in the CNI format ---- */

/* Prints a CNI error (the spec's JSON on stdout, a line on stderr) and returns the exit code. */
static int fail(const char *version, int code, const char *fmt, ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  struct buf out = {0};
  puts_(&out, "{\"cniVersion\":");
  const char *v = version && *version ? version : "1.1.0";
  put_json_string(&out, v, strlen(v));
  char num[32];
  snprintf(num, sizeof num, ",\"code\":%d,\"msg\":", code);
  puts_(&out, num);
  put_json_string(&out, msg, strlen(msg));
  puts_(&out, "}\n");
  fwrite(out.data, 1, out.len, stdout);
  fflush(stdout);
  const char *command = getenv("CNI_COMMAND"), *container = getenv("CNI_CONTAINERID");
  fprintf(stderr, "trellis: %s %s failed (code %d): %s\n", command ? command : "", container ? container : "", code, msg);
  free(out.data);
  return 1;
}

/* ---- just enough JSON to read a few top-level values ---- */

struct cursor {
  const char *p, *end;
};

static void skip_space(struct cursor *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static int hex4(const char *p, unsigned *out) {
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    char h = p[i];
    v <<= 4;
    if (h >= '0' && h <= '9') v |= (unsigned)(h - '0');
    else if (h >= 'a' && h <= 'f') v |= (unsigned)(h - 'a' + 10);
    else if (h >= 'A' && h <= 'F') v |= (unsigned)(h - 'A' + 10);
    else return -1;
  }
  *out = v;
  return 0;
}

static void put_utf8(struct buf *b, unsigned cp) {
  char u[4];
  if (cp < 0x80) {
    u[0] = (char)cp;
    put(b, u, 1);
  } else if (cp < 0x800) {
    u[0] = (char)(0xc0 | (cp >> 6));
    u[1] = (char)(0x80 | (cp & 0x3f));
    put(b, u, 2);
  } else if (cp < 0x10000) {
    u[0] = (char)(0xe0 | (cp >> 12));
    u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    u[2] = (char)(0x80 | (cp & 0x3f));
    put(b, u, 3);
  } else {
    u[0] = (char)(0xf0 | (cp >> 18));
    u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    u[3] = (char)(0x80 | (cp & 0x3f));
    put(b, u, 4);
  }
}

/* Reads a string literal at the cursor; its decoded bytes go to `out` (if given). 0, or -1 if malformed. */
static int read_string(struct cursor *c, struct buf *out) {
  if (c->p >= c->end || *c->p != '"') return -1;
  c->p++;
  while (c->p < c->end) {
    char ch = *c->p++;
    if (ch == '"') return 0;
    if (ch != '\\') {
      if (out) put(out, &ch, 1);
      continue;
    }
    if (c->p >= c->end) return -1;
    char e = *c->p++;
    const char *simple = strchr("\"\\/bfnrt", e);
    if (e && simple) {
      static const char decoded[] = "\"\\/\b\f\n\r\t";
      if (out) put(out, &decoded[simple - "\"\\/bfnrt"], 1);
      continue;
    }
    if (e != 'u' || c->end - c->p < 4) return -1;
    unsigned cp;
    if (hex4(c->p, &cp)) return -1;
    c->p += 4;
    if (cp >= 0xd800 && cp < 0xdc00 && c->end - c->p >= 6 && c->p[0] == '\\' && c->p[1] == 'u') {
      unsigned low;
      if (!hex4(c->p + 2, &low) && low >= 0xdc00 && low < 0xe000) {
        cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
        c->p += 6;
      }
    }
    if (cp >= 0xd800 && cp < 0xe000) cp = 0xfffd; /* a lone surrogate */
    if (out) put_utf8(out, cp);
  }
  return -1;
}

/* Skips one value of any kind. 0, or -1 if malformed. */
static int skip_value(struct cursor *c, int depth) {
  skip_space(c);
  if (c->p >= c->end || depth > 512) return -1;
  char ch = *c->p;
  if (ch == '"') return read_string(c, NULL);
  if (ch == '{' || ch == '[') {
    char close = ch == '{' ? '}' : ']';
    c->p++;
    skip_space(c);
    if (c->p < c->end && *c->p == close) {
      c->p++;
      return 0;
    }
    for (;;) {
      if (ch == '{') {
        skip_space(c);
        if (read_string(c, NULL)) return -1;
        skip_space(c);
        if (c->p >= c->end || *c->p++ != ':') return -1;
      }
      if (skip_value(c, depth + 1)) return -1;
      skip_space(c);
      if (c->p >= c->end) return -1;
      if (*c->p == ',') {
        c->p++;
        continue;
      }
      if (*c->p++ == close) return 0;
      return -1;
    }
  }
  /* a number, true, false or null: up to the next delimiter */
  const char *start = c->p;
  while (c->p < c->end && !strchr(",}] \t\r\n", *c->p)) c->p++;
  return c->p > start ? 0 : -1;
}

/*
 * For each top-level key of the object in `text` named in `keys`, decodes its string value into
 * `values[i]` (left empty when absent or not a string) or, for `numbers[i]`, its integer value.
 * Returns 0, or -1 when the text is not a JSON object.
 */
static int read_top_level(const char *text, size_t n, const char *const *keys, struct buf *values, long *numbers, int count) {
  struct cursor c = {text, text + n};
  skip_space(&c);
  if (c.p >= c.end || *c.p++ != '{') return -1;
  skip_space(&c);
  if (c.p < c.end && *c.p == '}') return 0;
  for (;;) {
    struct buf key = {0};
    skip_space(&c);
    if (read_string(&c, &key)) return free(key.data), -1;
    skip_space(&c);
    if (c.p >= c.end || *c.p++ != ':') return free(key.data), -1;
    skip_space(&c);
    int found = -1;
    for (int i = 0; i < count; i++)
      if (key.data && strlen(key.data) == key.len && strcmp(key.data, keys[i]) == 0) found = i;
    free(key.data);
    if (found >= 0 && c.p < c.end && *c.p == '"') {
      values[found].len = 0;
      if (read_string(&c, &values[found])) return -1;
    } else if (found >= 0 && numbers && c.p < c.end && (*c.p == '-' || (*c.p >= '0' && *c.p <= '9'))) {
      char *after;
      numbers[found] = strtol(c.p, &after, 10);
      c.p = after;
    } else if (skip_value(&c, 0)) {
      return -1;
    }
    skip_space(&c);
    if (c.p >= c.end) return -1;
    if (*c.p == ',') {
      c.p++;
      continue;
    }
    return *c.p == '}' ? 0 : -1;
  }
}

/* ---- the socket ---- */

/* To a socket (send without SIGPIPE when the agent is gone) or a file. */
static int write_all(int fd, const char *data, size_t n, int is_socket) {
  while (n > 0) {
    ssize_t w = is_socket ? send(fd, data, n, MSG_NOSIGNAL) : write(fd, data, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    data += w;
    n -= (size_t)w;
  }
  return 0;
}

static int read_all(int fd, char *data, size_t n) {
  while (n > 0) {
    ssize_t r = read(fd, data, n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (r == 0) {
      errno = EPIPE;
      return -1;
    }
    data += r;
    n -= (size_t)r;
  }
  return 0;
}

static void set_timeout(int fd, int optname, int seconds) {
  struct timeval tv = {.tv_sec = seconds, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, optname, &tv, sizeof tv);
}

/* ---- no agent: the standalone plugin ---- */

/* Execs trellis-standalone from this plugin's directory with the same environment and stdin. */
static int run_standalone(const char *argv0, const char *stdin_bytes, size_t n, const char *version) {
  char self[PATH_MAX];
  if (strchr(argv0, '/')) {
    snprintf(self, sizeof self, "%s", argv0);
  } else {
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len < 0) return fail(version, 50, "no trellis agent answers and this plugin cannot find its own path: %s", strerror(errno));
    self[len] = 0;
  }
  char *slash = strrchr(self, '/');
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%.*s/%s", (int)(slash - self), self, STANDALONE);
  /* The stdin already read is handed on through an in-memory file. */
  int memfd = memfd_create("trellis-stdin", 0);
  if (memfd < 0 || write_all(memfd, stdin_bytes, n, 0) || lseek(memfd, 0, SEEK_SET) < 0 || dup2(memfd, 0) < 0)
    return fail(version, 50, "no trellis agent answers and the standalone plugin cannot be given its input: %s", strerror(errno));
  close(memfd);
  char *args[] = {path, NULL};
  execve(path, args, environ);
  return fail(version, 50, "no trellis agent answers and the standalone plugin %s cannot run: %s", path, strerror(errno));
}

int main(int argc, char **argv) {
  (void)argc;
  const char *command = getenv("CNI_COMMAND");
  /* VERSION needs no agent and no config: answered here, as the agent would. */
  if (command && strcmp(command, "VERSION") == 0) {
    fputs(VERSION_REPLY, stdout);
    return 0;
  }

  struct buf in = {0};
  char chunk[65536];
  for (;;) {
    ssize_t r = read(0, chunk, sizeof chunk);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return fail(NULL, 5, "cannot read the network configuration from stdin: %s", strerror(errno));
    if (r == 0) break;
    put(&in, chunk, (size_t)r);
    if (in.len > MAX_MESSAGE) return fail(NULL, 7, "the network configuration on stdin is larger than %d bytes", MAX_MESSAGE);
  }
  if (!in.data) put(&in, "", 0);

  /* A config that does not parse is the agent's (or the fallback's) to refuse, with its message. */
  const char *const keys[] = {"agentSocket", "cniVersion"};
  struct buf values[2] = {{0}, {0}};
  read_top_level(in.data, in.len, keys, values, NULL, 2);
  const char *version = values[1].data ? values[1].data : "";
  const char *socket_path = values[0].data && values[0].len ? values[0].data : DEFAULT_SOCKET;

  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  size_t path_len = values[0].len ? values[0].len : strlen(DEFAULT_SOCKET);
  if (path_len >= sizeof addr.sun_path || strlen(socket_path) != path_len)
    return fail(version, 7, "agentSocket is not a usable socket path (at most %zu bytes, no NUL)", sizeof addr.sun_path - 1);
  memcpy(addr.sun_path, socket_path, strlen(socket_path));
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(version, 11, "cannot open a socket to the trellis agent: %s; try again later", strerror(errno));
  set_timeout(fd, SO_SNDTIMEO, CONNECT_TIMEOUT_S);
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
    int err = errno;
    close(fd);
    /* Nothing listens (never started, or gone): as opposed to an agent that is there but failing. */
    if (err == ENOENT || err == ECONNREFUSED || err == ENOTDIR) return run_standalone(argv[0], in.data, in.len, version);
    return fail(version, 11, "cannot reach the trellis agent at %s: %s; try again later", socket_path, strerror(err));
  }
  set_timeout(fd, SO_SNDTIMEO, REPLY_TIMEOUT_S);
  set_timeout(fd, SO_RCVTIMEO, REPLY_TIMEOUT_S);

  struct buf req = {0};
  put(&req, "\0\0\0\0", 4);
  puts_(&req, "{\"env\":{");
  int first = 1;
  for (char **e = environ; *e; e++) {
    const char *eq = strchr(*e, '=');
    if (!eq) continue;
    size_t name_len = (size_t)(eq - *e);
    if (!((name_len > 4 && strncmp(*e, "CNI_", 4) == 0) || (name_len == 4 && strncmp(*e, "PATH", 4) == 0))) continue;
    if (!first) put(&req, ",", 1);
    first = 0;
    put_json_string(&req, *e, name_len);
    put(&req, ":", 1);
    put_json_string(&req, eq + 1, strlen(eq + 1));
  }
  puts_(&req, "},\"stdin\":");
  put_json_string(&req, in.data, in.len);
  put(&req, "}", 1);
  uint32_t body = (uint32_t)(req.len - 4);
  unsigned char size[4] = {(unsigned char)(body >> 24), (unsigned char)(body >> 16), (unsigned char)(body >> 8), (unsigned char)body};
  memcpy(req.data, size, 4);
  if (write_all(fd, req.data, req.len, 1))
    return fail(version, 11, "the trellis agent at %s stopped taking the request (%s); try again later", socket_path, strerror(errno));

  unsigned char header[4];
  if (read_all(fd, (char *)header, 4))
    return fail(version, 11, "the trellis agent at %s closed the connection before answering (%s); nothing of this call was kept; try again later", socket_path, strerror(errno));
  uint32_t reply_len = ((uint32_t)header[0] << 24) | ((uint32_t)header[1] << 16) | ((uint32_t)header[2] << 8) | header[3];
  if (reply_len > MAX_REPLY) return fail(version, 11, "the trellis agent at %s answered something that is not a reply: a reply of %u bytes", socket_path, reply_len);
  char *reply = malloc(reply_len + 1);
  if (!reply) abort();
  if (read_all(fd, reply, reply_len))
    return fail(version, 11, "the trellis agent at %s closed the connection before answering (%s); nothing of this call was kept; try again later", socket_path, strerror(errno));
  close(fd);

  const char *const reply_keys[] = {"stdout", "stderr", "exitCode"};
  struct buf out[3] = {{0}, {0}, {0}};
  long numbers[3] = {0, 0, -1};
  if (read_top_level(reply, reply_len, reply_keys, out, numbers, 3) || numbers[2] < 0 || numbers[2] > 255)
    return fail(version, 11, "the trellis agent at %s answered something that is not a reply", socket_path);
  if (out[0].len) fwrite(out[0].data, 1, out[0].len, stdout);
  if (out[1].len) fwrite(out[1].data, 1, out[1].len, stderr);
  fflush(stdout);
  return (int)numbers[2];
}
