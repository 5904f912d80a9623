/* kv.c: open an instance, put keys, read one back, iterate over them, commit, close.
 *
 *   cc kv.c $(pkg-config --cflags --libs fusion) -o kv && ./kv instance-0.toml
 */
#include <fusion.h>
#include <stdio.h>
#include <string.h>

#define CHECK(call)                                                                     \
  do {                                                                                  \
    int rc_ = (call);                                                                   \
    if (rc_ != FUSION_OK) {                                                             \
      fprintf(stderr, "%s:%d: %s: %s (%s)\n", __FILE__, __LINE__, #call,               \
              fusion_strerror(rc_), fusion_errmsg());                                   \
      return 1;                                                                         \
    }                                                                                   \
  } while (0)

static int run(fusion_instance *db) {
  static const char *const keys[] = {"apple", "banana", "cherry"};
  static const char *const values[] = {"red", "yellow", "dark red"};

  /* One transaction: three puts, atomic and durable at commit. */
  fusion_txn *txn = NULL;
  CHECK(fusion_txn_begin(db, &txn));
  for (int i = 0; i < 3; i++) {
    CHECK(fusion_put(txn, (const uint8_t *)keys[i], strlen(keys[i]),
                     (const uint8_t *)values[i], strlen(values[i])));
  }
  CHECK(fusion_txn_commit(txn));
  fusion_txn_free(txn);

  /* Read one key into a caller buffer, then all of them in key order. */
  CHECK(fusion_txn_begin(db, &txn));
  char value[64];
  size_t len = 0;
  CHECK(fusion_get(txn, (const uint8_t *)"banana", 6, (uint8_t *)value, sizeof value, &len));
  printf("banana = %.*s\n", (int)len, value);
  if (len != 6 || memcmp(value, "yellow", 6) != 0) {
    fprintf(stderr, "banana: wrong value\n");
    return 1;
  }

  fusion_iter *it = NULL;
  CHECK(fusion_iter_open(txn, NULL, 0, NULL, 0, &it));
  const uint8_t *k, *v;
  size_t klen, vlen;
  int seen = 0, rc;
  while ((rc = fusion_iter_next(it, &k, &klen, &v, &vlen)) == FUSION_OK) {
    printf("%.*s = %.*s\n", (int)klen, (const char *)k, (int)vlen, (const char *)v);
    if (seen < 3 && (klen != strlen(keys[seen]) || memcmp(k, keys[seen], klen) != 0)) {
      fprintf(stderr, "iteration out of order at %d\n", seen);
      return 1;
    }
    seen++;
  }
  fusion_iter_close(it);
  if (rc != FUSION_END || seen != 3) {
    fprintf(stderr, "iteration: %s, %d keys\n", fusion_strerror(rc), seen);
    return 1;
  }
  CHECK(fusion_txn_commit(txn));
  fusion_txn_free(txn);
  printf("ok: %d keys\n", seen);
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s CONFIG\n", argv[0]);
    return 2;
  }
  printf("libfusion %s (ABI %u)\n", fusion_version(), fusion_abi_version());
  fusion_instance *db = NULL;
  CHECK(fusion_open(argv[1], &db));
  int failed = run(db);
  int rc = fusion_close(db);
  if (rc != FUSION_OK) {
    fprintf(stderr, "fusion_close: %s (%s)\n", fusion_strerror(rc), fusion_errmsg());
    failed = 1;
  }
  fusion_free(db);
  return failed;
}
