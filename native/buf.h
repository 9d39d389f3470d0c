/* A growable byte buffer, kept NUL-terminated so its text can be used as a C string. */
#ifndef TRELLIS_BUF_H
#define TRELLIS_BUF_H

#include <stdlib.h>
#include <string.h>

struct buf {
  char *data;
  size_t len, cap;
};

static void put(struct buf *b, const void *bytes, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (b->len + n + 1 > cap) cap *= 2;
    char *grown = realloc(b->data, cap);
    if (!grown) abort();
    b->data = grown;
    b->cap = cap;
  }
  memcpy(b->data + b->len, bytes, n);
  b->len += n;
  b->data[b->len] = 0;
}

#endif
