/*
 * Shared by test/helpers/probe.c and bench/connect-loop.c: join a cgroup and
 * a network namespace, parse address literals, name errno values.
 * Every function is static inline so that a file that uses only some of them
 * still compiles with -Wall -Werror. Define _GNU_SOURCE before including.
 */
#ifndef EGRESSD_TEST_JOIN_H
#define EGRESSD_TEST_JOIN_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Exit codes shared by both programs. */
#define EXIT_USAGE 2
#define EXIT_JOIN 3

/* "EPERM", "ECONNREFUSED", ... (glibc >= 2.32), or "E<number>" if unnamed. */
static inline const char *errno_name(int err) {
  static char buf[24];
  const char *name = strerrorname_np(err);
  if (name) return name;
  snprintf(buf, sizeof buf, "E%d", err);
  return buf;
}

/* Moves the calling process into the cgroup v2 directory `dir` ("0" means "me"). */
static inline int join_cgroup(const char *dir) {
  char path[4096];
  if (snprintf(path, sizeof path, "%s/cgroup.procs", dir) >= (int)sizeof path) {
    fprintf(stderr, "cgroup path too long: %s\n", dir);
    return -1;
  }
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    fprintf(stderr, "cannot join cgroup: open %s: %s\n", path, strerror(errno));
    return -1;
  }
  if (write(fd, "0", 1) != 1) {
    fprintf(stderr, "cannot join cgroup: write %s: %s\n", path, strerror(errno));
    close(fd);
    return -1;
  }
  close(fd);
  return 0;
}

/* Enters the network namespace bound at `path` (e.g. /run/netns/NAME). */
static inline int join_netns(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    fprintf(stderr, "cannot join netns: open %s: %s\n", path, strerror(errno));
    return -1;
  }
  if (setns(fd, CLONE_NEWNET) < 0) {
    fprintf(stderr, "cannot join netns: setns %s: %s\n", path, strerror(errno));
    close(fd);
    return -1;
  }
  close(fd);
  return 0;
}

/*
 * Parses an address literal: AF_INET for a.b.c.d, AF_INET6 for anything with
 * ':' (including ::ffff:a.b.c.d). Port in host byte order. 0 on success.
 */
static inline int parse_addr(const char *addr, int port, struct sockaddr_storage *ss, socklen_t *len) {
  memset(ss, 0, sizeof *ss);
  if (strchr(addr, ':')) {
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET6, addr, &s6->sin6_addr) != 1) return -1;
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons((unsigned short)port);
    *len = sizeof *s6;
  } else {
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    if (inet_pton(AF_INET, addr, &s4->sin_addr) != 1) return -1;
    s4->sin_family = AF_INET;
    s4->sin_port = htons((unsigned short)port);
    *len = sizeof *s4;
  }
  return 0;
}

/* Parses a decimal number in [min, max]; 0 on success. */
static inline int parse_num(const char *s, long long min, long long max, long long *out) {
  if (!*s) return -1;
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || *end || v < min || v > max) return -1;
  *out = v;
  return 0;
}

/*
 * Parses "ADDR:PORT" or "[IPV6]:PORT" (the last ':' separates the port when
 * there are no brackets, so bare IPv6 needs brackets). 0 on success.
 */
static inline int parse_target(const char *s, struct sockaddr_storage *ss, socklen_t *len) {
  char addr[128];
  const char *port;
  if (s[0] == '[') {
    const char *close = strchr(s, ']');
    if (!close || close[1] != ':' || (size_t)(close - s - 1) >= sizeof addr) return -1;
    memcpy(addr, s + 1, (size_t)(close - s - 1));
    addr[close - s - 1] = '\0';
    port = close + 2;
  } else {
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof addr) return -1;
    memcpy(addr, s, (size_t)(colon - s));
    addr[colon - s] = '\0';
    port = colon + 1;
  }
  long long p;
  if (parse_num(port, 0, 65535, &p)) return -1;
  return parse_addr(addr, (int)p, ss, len);
}

/* Writes `s` as a JSON string (with quotes) to `f`. */
static inline void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      fprintf(f, "\\%c", c);
    else if (c < 0x20)
      fprintf(f, "\\u%04x", c);
    else
      fputc(c, f);
  }
  fputc('"', f);
}

#endif
