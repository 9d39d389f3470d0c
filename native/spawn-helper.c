/*
 * trellis-spawn: starts processes for the trellis agent. The agent is a large process, and a
 * fork of it copies its page tables while its only JavaScript thread waits (about 5 ms at
 * 130 MiB, twice per pod ADD); this small process forks instead.
 *
 * On stdin, messages; on stdout, one reply per process when it has ended. Integers are 32-bit
 * big-endian; every message starts with its length (not counting those 4 bytes), then its kind.
 *   start    1, id, argc, argv[0] NUL argv[1] NUL ...    (starts it; its stdin stays open)
 *   input    2, id, timeout_ms (0: none), stdin_len, stdin (all of its stdin, which is then
 *            closed; the deadline counts from here)
 *   reply    id, status (exit code; -N: killed by signal N; -1000: could not be started),
 *            stdout_len, stdout, stderr_len, stderr
 * A process can be started ahead and given its input when the caller has it.
 * argv[0] is looked up in PATH. The processes inherit this one's environment and namespaces.
 * When stdin ends (the agent is gone), it exits.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"

#define MAX_REQUEST (64 << 20)
#define MAX_CHILDREN 1024


static void put_u32(struct buf *b, uint32_t v) {
  unsigned char be[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16), (unsigned char)(v >> 8), (unsigned char)v};
  put(b, be, 4);
}

static uint32_t get_u32(const char *p) {
  const unsigned char *u = (const unsigned char *)p;
  return ((uint32_t)u[0] << 24) | ((uint32_t)u[1] << 16) | ((uint32_t)u[2] << 8) | u[3];
}

struct child {
  int used;
  uint32_t id;
  pid_t pid;
  int in, out, err; /* -1 once closed */
  struct buf input;
  size_t written;
  int input_done;
  struct buf stdout_, stderr_;
  int exited, status;
  int64_t deadline_ms; /* 0: none */
};

static struct child children[MAX_CHILDREN];
static struct buf replies; /* to write to stdout */
static size_t replies_written;
static int sigchld_pipe[2];

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_sigchld(int sig) {
  (void)sig;
  int saved = errno;
  if (write(sigchld_pipe[1], "x", 1) < 0) { /* the pipe is full: a wake-up is pending anyway */ }
  errno = saved;
}

static void reply(uint32_t id, int32_t status, const struct buf *out, const struct buf *err) {
  put_u32(&replies, (uint32_t)(12 + out->len + 4 + err->len));
  put_u32(&replies, id);
  put_u32(&replies, (uint32_t)status);
  put_u32(&replies, (uint32_t)out->len);
  put(&replies, out->data, out->len);
  put_u32(&replies, (uint32_t)err->len);
  put(&replies, err->data, err->len);
}

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

static void finish_if_done(struct child *c) {
  if (!c->used || !c->exited || c->out >= 0 || c->err >= 0) return;
  close_fd(&c->in);
  reply(c->id, c->status, &c->stdout_, &c->stderr_);
  free(c->input.data);
  free(c->stdout_.data);
  free(c->stderr_.data);
  memset(c, 0, sizeof *c);
}

static struct child *find(uint32_t id) {
  for (int i = 0; i < MAX_CHILDREN; i++)
    if (children[i].used && children[i].id == id) return &children[i];
  return NULL;
}

/* Input for a started process: kept until its stdin takes it, then stdin is closed. */
static void give_input(const char *msg, uint32_t len) {
  if (len < 12) return;
  uint32_t id = get_u32(msg), timeout_ms = get_u32(msg + 4), in_len = get_u32(msg + 8);
  if (len - 12 < in_len) return;
  struct child *c = find(id);
  if (!c) return; /* it has already ended and been answered */
  put(&c->input, msg + 12, in_len);
  c->input_done = 1;
  c->deadline_ms = timeout_ms ? now_ms() + timeout_ms : 0;
}

static void start(const char *req, uint32_t len) {
  struct buf empty = {0};
  if (len < 8) return;
  uint32_t id = get_u32(req), argc = get_u32(req + 4);
  const char *p = req + 8, *end = req + len;
  struct buf why = {0};
  if (argc == 0 || argc > 4096) {
    put(&why, "bad request: argc", 17);
    reply(id, -1000, &empty, &why);
    free(why.data);
    return;
  }
  char **argv = calloc(argc + 1, sizeof *argv);
  for (uint32_t i = 0; i < argc; i++) {
    const char *nul = memchr(p, 0, (size_t)(end - p));
    if (!nul) {
      free(argv);
      put(&why, "bad request: argv", 17);
      reply(id, -1000, &empty, &why);
      free(why.data);
      return;
    }
    argv[i] = (char *)p;
    p = nul + 1;
  }

  struct child *c = NULL;
  for (int i = 0; i < MAX_CHILDREN; i++)
    if (!children[i].used) {
      c = &children[i];
      break;
    }
  int in[2], out[2], err[2];
  if (!c || pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
    free(argv);
    const char *msg = c ? strerror(errno) : "too many processes at once";
    put(&why, msg, strlen(msg));
    reply(id, -1000, &empty, &why);
    free(why.data);
    return;
  }
  pid_t pid = fork();
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    signal(SIGPIPE, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execvp(argv[0], argv);
    dprintf(2, "cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  free(argv);
  close(in[0]);
  close(out[1]);
  close(err[1]);
  if (pid < 0) {
    close(in[1]);
    close(out[0]);
    close(err[0]);
    const char *msg = strerror(errno);
    put(&why, msg, strlen(msg));
    reply(id, -1000, &empty, &why);
    free(why.data);
    return;
  }
  memset(c, 0, sizeof *c);
  c->used = 1;
  c->id = id;
  c->pid = pid;
  c->in = in[1];
  c->out = out[0];
  c->err = err[0];
  fcntl(c->in, F_SETFL, O_NONBLOCK);
  fcntl(c->out, F_SETFL, O_NONBLOCK);
  fcntl(c->err, F_SETFL, O_NONBLOCK);
}

static void reap(void) {
  int st;
  pid_t pid;
  while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
    for (int i = 0; i < MAX_CHILDREN; i++) {
      struct child *c = &children[i];
      if (!c->used || c->pid != pid) continue;
      c->exited = 1;
      c->status = WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
      finish_if_done(c);
    }
  }
}

static void drain(struct child *c, int *fd, struct buf *b) {
  char chunk[65536];
  for (;;) {
    ssize_t r = read(*fd, chunk, sizeof chunk);
    if (r > 0) {
      put(b, chunk, (size_t)r);
      continue;
    }
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
    close_fd(fd);
    finish_if_done(c);
    return;
  }
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  if (pipe2(sigchld_pipe, O_CLOEXEC | O_NONBLOCK)) return 1;
  struct sigaction sa = {0};
  sa.sa_handler = on_sigchld;
  sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
  sigaction(SIGCHLD, &sa, NULL);
  fcntl(0, F_SETFL, O_NONBLOCK);
  fcntl(1, F_SETFL, O_NONBLOCK);
  struct buf requests = {0};
  int input_open = 1;
  static struct pollfd fds[3 + 3 * MAX_CHILDREN];
  static struct child *owner[3 + 3 * MAX_CHILDREN];
  static int which[3 + 3 * MAX_CHILDREN];
  for (;;) {
    /* Requests complete in the buffer start their processes. */
    size_t used = 0;
    while (requests.len - used >= 4) {
      uint32_t len = get_u32(requests.data + used);
      if (len > MAX_REQUEST) return 2;
      if (requests.len - used - 4 < len) break;
      if (len >= 1 && requests.data[used + 4] == 1) start(requests.data + used + 5, len - 1);
      else if (len >= 1 && requests.data[used + 4] == 2) give_input(requests.data + used + 5, len - 1);
      used += 4 + len;
    }
    if (used) {
      memmove(requests.data, requests.data + used, requests.len - used);
      requests.len -= used;
    }
    if (!input_open) return 0;

    int n = 0;
    int64_t wait = -1, now = now_ms();
    fds[n] = (struct pollfd){.fd = 0, .events = POLLIN};
    owner[n++] = NULL;
    fds[n] = (struct pollfd){.fd = sigchld_pipe[0], .events = POLLIN};
    owner[n++] = NULL;
    if (replies.len > replies_written) {
      fds[n] = (struct pollfd){.fd = 1, .events = POLLOUT};
      owner[n++] = NULL;
    }
    for (int i = 0; i < MAX_CHILDREN; i++) {
      struct child *c = &children[i];
      if (!c->used) continue;
      if (c->deadline_ms) {
        if (now >= c->deadline_ms) {
          kill(c->pid, SIGKILL);
          c->deadline_ms = 0;
        } else if (wait < 0 || c->deadline_ms - now < wait) {
          wait = c->deadline_ms - now;
        }
      }
      if (c->in >= 0 && c->input_done && c->written == c->input.len) close_fd(&c->in);
      if (c->in >= 0 && c->input_done) {
        fds[n] = (struct pollfd){.fd = c->in, .events = POLLOUT};
        owner[n] = c;
        which[n++] = 0;
      }
      if (c->out >= 0) {
        fds[n] = (struct pollfd){.fd = c->out, .events = POLLIN};
        owner[n] = c;
        which[n++] = 1;
      }
      if (c->err >= 0) {
        fds[n] = (struct pollfd){.fd = c->err, .events = POLLIN};
        owner[n] = c;
        which[n++] = 2;
      }
    }
    if (poll(fds, (nfds_t)n, (int)wait) < 0 && errno != EINTR) return 3;
    for (int i = 0; i < n; i++) {
      if (!fds[i].revents) continue;
      struct child *c = owner[i];
      if (!c) {
        if (fds[i].fd == 0) {
          char chunk[65536];
          ssize_t r = read(0, chunk, sizeof chunk);
          if (r > 0) put(&requests, chunk, (size_t)r);
          else if (r == 0 || (errno != EAGAIN && errno != EINTR)) input_open = 0;
        } else if (fds[i].fd == sigchld_pipe[0]) {
          char drainbuf[256];
          while (read(sigchld_pipe[0], drainbuf, sizeof drainbuf) > 0) {
          }
        } else {
          ssize_t w = write(1, replies.data + replies_written, replies.len - replies_written);
          if (w > 0) replies_written += (size_t)w;
          else if (w < 0 && errno != EAGAIN && errno != EINTR) return 4;
          if (replies_written == replies.len) replies.len = replies_written = 0;
        }
        continue;
      }
      if (!c->used) continue;
      if (which[i] == 0 && c->in >= 0) {
        ssize_t w = write(c->in, c->input.data + c->written, c->input.len - c->written);
        if (w > 0) c->written += (size_t)w;
        if ((w < 0 && errno != EAGAIN && errno != EINTR) || c->written == c->input.len) close_fd(&c->in);
      } else if (which[i] == 1 && c->out >= 0) {
        drain(c, &c->out, &c->stdout_);
      } else if (which[i] == 2 && c->err >= 0) {
        drain(c, &c->err, &c->stderr_);
      }
    }
    reap();
  }
}
