/* bench.c: key-value throughput through the C ABI, for comparison with the same operations
 * through the Rust API (tests/c.rs, compare_c_and_rust_throughput).
 *
 *   bench CONFIG N
 *
 * Puts N keys, each in its own transaction committed durably; then reads them all back ten
 * times, 100 gets per transaction. Prints "put_commit_per_s X get_per_s Y".
 */
#include <fusion.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define GETS_PER_TXN 100
#define GET_PASSES 10

#define CHECK(call)                                                                     \
  do {                                                                                  \
    int rc_ = (call);                                                                   \
    if (rc_ != FUSION_OK) {                                                             \
      fprintf(stderr, "%s:%d: %s: %s (%s)\n", __FILE__, __LINE__, #call,               \
              fusion_strerror(rc_), fusion_errmsg());                                   \
      return 1;                                                                         \
    }                                                                                   \
  } while (0)

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int run(fusion_instance *db, int n) {
  char key[32], value[64];
  double begin = now();
  for (int i = 0; i < n; i++) {
    int klen = snprintf(key, sizeof key, "key-%08d", i);
    int vlen = snprintf(value, sizeof value, "value-%08d-padding-padding", i);
    fusion_txn *txn = NULL;
    CHECK(fusion_txn_begin(db, &txn));
    CHECK(fusion_put(txn, (uint8_t *)key, (size_t)klen, (uint8_t *)value, (size_t)vlen));
    CHECK(fusion_txn_commit(txn));
    fusion_txn_free(txn);
  }
  double puts = now() - begin;
  begin = now();
  for (int i = 0; i < GET_PASSES * n; i += GETS_PER_TXN) {
    fusion_txn *txn = NULL;
    CHECK(fusion_txn_begin(db, &txn));
    for (int j = i; j < i + GETS_PER_TXN && j < GET_PASSES * n; j++) {
      int klen = snprintf(key, sizeof key, "key-%08d", j % n);
      size_t len;
      CHECK(fusion_get(txn, (uint8_t *)key, (size_t)klen, (uint8_t *)value, sizeof value, &len));
    }
    CHECK(fusion_txn_commit(txn));
    fusion_txn_free(txn);
  }
  double gets = now() - begin;
  printf("put_commit_per_s %.0f get_per_s %.0f\n", n / puts, GET_PASSES * n / gets);
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s CONFIG N\n", argv[0]);
    return 2;
  }
  fusion_instance *db = NULL;
  CHECK(fusion_open(argv[1], &db));
  int failed = run(db, atoi(argv[2]));
  int rc = fusion_close(db);
  if (rc != FUSION_OK) {
    fprintf(stderr, "fusion_close: %s (%s)\n", fusion_strerror(rc), fusion_errmsg());
    failed = 1;
  }
  fusion_free(db);
  return failed;
}
