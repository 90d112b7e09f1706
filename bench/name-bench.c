/*
 * name-bench: the client and servers of bench/names.ts (name-bound connections).
 *
 *   name-bench serve ECHO_PORT SINK_PORT
 *       in one poll loop, on [::] (dual-stack): an echo server (everything
 *       read is written back) and a sink (everything read is dropped).
 *       Prints {"ready":true}; runs until SIGTERM.
 *   name-bench latency ADDR PORT COUNT HEX
 *       COUNT times: connect, send HEX, read it back whole, close (RST: no
 *       TIME_WAIT pile-up). Prints {"p50_us":..,"p99_us":..,"mean_us":..,"errors":N}.
 *   name-bench bulk ADDR PORT BYTES HEX
 *       connect, send HEX (the first bytes, judged), then BYTES in 256 KiB
 *       sends, shut down the write side and wait for the sink to close.
 *       Prints {"seconds":..,"gbit_per_s":..}.
 * IPv4 addresses only for the clients.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS 256
#define CHUNK (256 * 1024)

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int listener(int port) {
  int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int zero = 0, one = 1;
  setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons((unsigned short)port)};
  if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 512) < 0) {
    perror("name-bench: listen");
    exit(1);
  }
  return fd;
}

static int serve(int echo_port, int sink_port) {
  struct pollfd fds[MAX_FDS];
  int echo[MAX_FDS];
  int n = 2;
  fds[0] = (struct pollfd){.fd = listener(echo_port), .events = POLLIN};
  fds[1] = (struct pollfd){.fd = listener(sink_port), .events = POLLIN};
  static char buf[CHUNK];
  printf("{\"ready\":true}\n");
  fflush(stdout);
  for (;;) {
    if (poll(fds, (nfds_t)n, -1) < 0 && errno != EINTR) return 1;
    for (int i = 0; i < n; i++) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      if (i < 2) {
        int c = accept4(fds[i].fd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) continue;
        if (n == MAX_FDS) {
          close(c);
          continue;
        }
        int one = 1;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        echo[n] = i == 0;
        fds[n++] = (struct pollfd){.fd = c, .events = POLLIN};
        continue;
      }
      ssize_t r = read(fds[i].fd, buf, sizeof buf);
      if (r > 0 && echo[i]) {
        ssize_t off = 0;
        while (off < r) {
          ssize_t w = write(fds[i].fd, buf + off, (size_t)(r - off));
          if (w <= 0) break;
          off += w;
        }
      }
      if (r <= 0) {
        close(fds[i].fd);
        fds[i] = fds[n - 1];
        echo[i] = echo[n - 1];
        n--;
        i--;
      }
    }
  }
}

static int connect_to(const char *addr, int port) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
  inet_pton(AF_INET, addr, &a.sin_addr);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static size_t unhex(const char *hex, unsigned char **out) {
  size_t n = strlen(hex) / 2;
  *out = malloc(n + 1);
  for (size_t i = 0; i < n; i++) sscanf(hex + 2 * i, "%2hhx", &(*out)[i]);
  return n;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static int latency(const char *addr, int port, int count, const char *hex) {
  unsigned char *data;
  size_t n = unhex(hex, &data);
  double *us = calloc((size_t)count, sizeof *us);
  unsigned char buf[65536];
  int ok = 0, errors = 0;
  double sum = 0;
  for (int i = 0; i < count; i++) {
    double t0 = now_s();
    int fd = connect_to(addr, port);
    size_t got = 0;
    if (fd >= 0 && write(fd, data, n) == (ssize_t)n) {
      while (got < n) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r <= 0) break;
        got += (size_t)r;
      }
    }
    if (fd >= 0) {
      struct linger lg = {.l_onoff = 1, .l_linger = 0};
      setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
      close(fd);
    }
    if (got != n) {
      errors++;
      continue;
    }
    us[ok] = (now_s() - t0) * 1e6;
    sum += us[ok++];
  }
  qsort(us, (size_t)ok, sizeof *us, cmp);
  printf("{\"p50_us\":%.1f,\"p99_us\":%.1f,\"mean_us\":%.1f,\"errors\":%d}\n", ok ? us[ok / 2] : 0,
         ok ? us[(ok * 99) / 100] : 0, ok ? sum / ok : 0, errors);
  return 0;
}

static int bulk(const char *addr, int port, long long bytes, const char *hex) {
  unsigned char *data;
  size_t n = unhex(hex, &data);
  static char chunk[CHUNK];
  memset(chunk, 'b', sizeof chunk);
  int fd = connect_to(addr, port);
  if (fd < 0 || write(fd, data, n) != (ssize_t)n) {
    printf("{\"error\":\"%s\"}\n", strerrorname_np(errno));
    return 0;
  }
  double t0 = now_s();
  long long left = bytes;
  while (left > 0) {
    ssize_t w = write(fd, chunk, left < CHUNK ? (size_t)left : CHUNK);
    if (w <= 0) {
      printf("{\"error\":\"%s\"}\n", strerrorname_np(errno));
      return 0;
    }
    left -= w;
  }
  shutdown(fd, SHUT_WR);
  char b;
  while (read(fd, &b, 1) > 0) {
  }
  double s = now_s() - t0;
  printf("{\"seconds\":%.4f,\"gbit_per_s\":%.2f}\n", s, (double)bytes * 8 / s / 1e9);
  close(fd);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 4 && strcmp(argv[1], "serve") == 0) return serve(atoi(argv[2]), atoi(argv[3]));
  if (argc == 6 && strcmp(argv[1], "latency") == 0) return latency(argv[2], atoi(argv[3]), atoi(argv[4]), argv[5]);
  if (argc == 6 && strcmp(argv[1], "bulk") == 0) return bulk(argv[2], atoi(argv[3]), atoll(argv[4]), argv[5]);
  fprintf(stderr, "usage: name-bench serve ECHO_PORT SINK_PORT | latency ADDR PORT COUNT HEX | bulk ADDR PORT BYTES HEX\n");
  return 2;
}
