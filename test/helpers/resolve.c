/*
 * resolve: one getaddrinfo() of a name, timed, for egressd's DNS tests.
 * Built twice by scripts/build.sh: build/resolve-glibc (dynamically linked
 * against glibc) and build/resolve-musl (static, musl-gcc), so that a test
 * sees how long each C library's stub resolver takes to give up.
 *
 *   resolve NAME
 *
 * Prints one JSON line: {"name":NAME,"result":"ok"|"EAI_...","ms":T,"addresses":[...]}
 * where T is the wall time of the getaddrinfo() call (CLOCK_MONOTONIC).
 * Exit 0 whatever the result; 2 on a usage error. The resolver is whatever
 * /etc/resolv.conf names (a test bind-mounts its own in a mount namespace).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

static const char *gai_name(int rc) {
  switch (rc) {
  case 0: return "ok";
  case EAI_NONAME: return "EAI_NONAME";
  case EAI_AGAIN: return "EAI_AGAIN";
  case EAI_FAIL: return "EAI_FAIL";
  case EAI_FAMILY: return "EAI_FAMILY";
  case EAI_SERVICE: return "EAI_SERVICE";
  case EAI_MEMORY: return "EAI_MEMORY";
  case EAI_SYSTEM: return "EAI_SYSTEM";
#ifdef EAI_NODATA
  case EAI_NODATA: return "EAI_NODATA";
#endif
  default: return "EAI_OTHER";
  }
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: resolve NAME\n");
    return 2;
  }
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  int rc = getaddrinfo(argv[1], NULL, &hints, &res);
  clock_gettime(CLOCK_MONOTONIC, &b);
  double ms = (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6;
  printf("{\"name\":\"%s\",\"result\":\"%s\",\"ms\":%.3f,\"addresses\":[", argv[1], gai_name(rc), ms);
  int first = 1;
  for (struct addrinfo *p = res; p; p = p->ai_next) {
    char text[INET6_ADDRSTRLEN] = "";
    const void *addr = p->ai_family == AF_INET ? (const void *)&((struct sockaddr_in *)p->ai_addr)->sin_addr
                                               : (const void *)&((struct sockaddr_in6 *)p->ai_addr)->sin6_addr;
    if (!inet_ntop(p->ai_family, addr, text, sizeof text)) continue;
    printf("%s\"%s\"", first ? "" : ",", text);
    first = 0;
  }
  printf("]}\n");
  if (res) freeaddrinfo(res);
  return 0;
}
