/* errors.c: bad calls return the codes fusion.h documents.
 *
 *   errors GOOD_CONFIG BAD_CONFIG
 */
#include <fusion.h>
#include <stdio.h>
#include <string.h>

static int failures = 0;

#define EXPECT(call, code)                                                              \
  do {                                                                                  \
    int rc_ = (call);                                                                   \
    if (rc_ != (code)) {                                                                \
      fprintf(stderr, "%s:%d: %s returned %d (%s), expected %s (%s)\n", __FILE__,      \
              __LINE__, #call, rc_, fusion_strerror(rc_), #code, fusion_errmsg());      \
      failures++;                                                                       \
    }                                                                                   \
  } while (0)

#define TRUE(cond)                                                                      \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      fprintf(stderr, "%s:%d: %s is false\n", __FILE__, __LINE__, #cond);              \
      failures++;                                                                       \
    }                                                                                   \
  } while (0)

static const uint8_t KEY[] = "key";
static const uint8_t VALUE[] = "ten bytes!";

static void null_arguments(fusion_instance *db) {
  fusion_txn *txn = (fusion_txn *)1;
  EXPECT(fusion_txn_begin(NULL, &txn), FUSION_EINVAL);
  TRUE(txn == NULL);
  EXPECT(fusion_txn_begin(db, NULL), FUSION_EINVAL);
  EXPECT(fusion_block_txn_begin(NULL, &txn), FUSION_EINVAL);
  EXPECT(fusion_put(NULL, KEY, 3, VALUE, 10), FUSION_EINVAL);
  EXPECT(fusion_txn_commit(NULL), FUSION_EINVAL);
  EXPECT(fusion_txn_abort(NULL), FUSION_EINVAL);
  EXPECT(fusion_instance_stats(db, NULL), FUSION_EINVAL);
  EXPECT(fusion_instance_stats(NULL, NULL), FUSION_EINVAL);
  EXPECT(fusion_checkpoint(NULL), FUSION_EINVAL);
  uint8_t byte;
  EXPECT(fusion_block_read(NULL, 1, 0, &byte, 1), FUSION_EINVAL);
  EXPECT(fusion_block_read(db, 1, 0, NULL, 1), FUSION_EINVAL);
  uint64_t block;
  EXPECT(fusion_block_alloc(db, NULL), FUSION_EINVAL);
  EXPECT(fusion_block_alloc(NULL, &block), FUSION_EINVAL);
  fusion_lock *lock = NULL;
  fusion_lock_name name = {.kind = 7, .a = 2, .b = 0};
  EXPECT(fusion_lock_acquire(db, NULL, FUSION_LOCK_EX, 1000, &lock), FUSION_EINVAL);
  EXPECT(fusion_lock_acquire(db, &name, 6, 1000, &lock), FUSION_EINVAL);
  TRUE(strstr(fusion_errmsg(), "mode") != NULL);
  EXPECT(fusion_lock_get_value(NULL, NULL), FUSION_EINVAL);
  EXPECT(fusion_iter_next(NULL, NULL, NULL, NULL, NULL), FUSION_EINVAL);
  /* Every close and free function accepts NULL. */
  fusion_txn_free(NULL);
  fusion_iter_close(NULL);
  fusion_lock_release(NULL);
  fusion_buf_free(NULL);
  fusion_free(NULL);
  EXPECT(fusion_close(NULL), FUSION_OK);
}

static void block_calls(fusion_instance *db) {
  uint64_t blocks;
  size_t payload;
  EXPECT(fusion_block_info(db, &blocks, &payload), FUSION_OK);
  uint8_t buf[8];
  EXPECT(fusion_block_read(db, blocks, 0, buf, 1), FUSION_ERANGE);
  EXPECT(fusion_block_read(db, 1, payload - 4, buf, 8), FUSION_ERANGE);
  fusion_txn *txn = NULL;
  EXPECT(fusion_block_txn_begin(db, &txn), FUSION_OK);
  EXPECT(fusion_block_update(txn, 1, payload - 4, buf, 8), FUSION_ERANGE);
  EXPECT(fusion_block_update(txn, blocks, 0, buf, 1), FUSION_ERANGE);
  /* Key-value calls on a block transaction. */
  EXPECT(fusion_put(txn, KEY, 3, VALUE, 10), FUSION_EWRONGKIND);
  /* The failures left the transaction usable; an empty commit works. */
  EXPECT(fusion_txn_commit(txn), FUSION_OK);
  EXPECT(fusion_block_update(txn, 1, 0, buf, 1), FUSION_ETXNDONE);
  EXPECT(fusion_txn_commit(txn), FUSION_ETXNDONE);
  fusion_txn_free(txn);
}

static void kv_calls(fusion_instance *db) {
  fusion_txn *txn = NULL;
  EXPECT(fusion_txn_begin(db, &txn), FUSION_OK);
  EXPECT(fusion_put(txn, KEY, 3, VALUE, 10), FUSION_OK);
  EXPECT(fusion_put(txn, NULL, 3, VALUE, 10), FUSION_EINVAL);

  /* A buffer too small: the needed length comes back, nothing is copied. */
  uint8_t small[4] = {'x', 'x', 'x', 'x'};
  size_t len = 0;
  EXPECT(fusion_get(txn, KEY, 3, small, sizeof small, &len), FUSION_ETOOSMALL);
  TRUE(len == 10);
  TRUE(small[0] == 'x');
  EXPECT(fusion_get(txn, KEY, 3, NULL, 0, &len), FUSION_ETOOSMALL);
  TRUE(len == 10);
  uint8_t big[10];
  EXPECT(fusion_get(txn, KEY, 3, big, sizeof big, &len), FUSION_OK);
  TRUE(len == 10 && memcmp(big, VALUE, 10) == 0);
  EXPECT(fusion_get(txn, (const uint8_t *)"nope", 4, big, sizeof big, &len), FUSION_ENOTFOUND);
  TRUE(len == 0);

  fusion_buf out = {0};
  EXPECT(fusion_get_buf(txn, KEY, 3, &out), FUSION_OK);
  TRUE(out.len == 10 && memcmp(out.data, VALUE, 10) == 0);
  fusion_buf_free(&out);
  TRUE(out.data == NULL && out.len == 0);
  fusion_buf_free(&out);

  /* Block calls on a key-value transaction. */
  EXPECT(fusion_block_update(txn, 1, 0, small, 1), FUSION_EWRONGKIND);

  /* Closing with a transaction in progress is refused, and changes nothing. */
  EXPECT(fusion_close(db), FUSION_EBUSY);

  /* An iterator that outlives its transaction reports it. */
  fusion_iter *it = NULL;
  EXPECT(fusion_iter_open(txn, NULL, 0, NULL, 0, &it), FUSION_OK);
  int existed = -1;
  EXPECT(fusion_delete(txn, KEY, 3, &existed), FUSION_OK);
  TRUE(existed == 1);
  EXPECT(fusion_delete(txn, KEY, 3, &existed), FUSION_OK);
  TRUE(existed == 0);
  EXPECT(fusion_txn_commit(txn), FUSION_OK);

  /* A used-up transaction. */
  EXPECT(fusion_put(txn, KEY, 3, VALUE, 10), FUSION_ETXNDONE);
  EXPECT(fusion_get(txn, KEY, 3, big, sizeof big, &len), FUSION_ETXNDONE);
  EXPECT(fusion_txn_commit(txn), FUSION_ETXNDONE);
  EXPECT(fusion_txn_abort(txn), FUSION_ETXNDONE);
  const uint8_t *k, *v;
  size_t klen, vlen;
  EXPECT(fusion_iter_next(it, &k, &klen, &v, &vlen), FUSION_ETXNDONE);
  fusion_iter_close(it);
  fusion_txn_free(txn);
}

static void closed_instance(fusion_instance *db) {
  /* A held lock keeps the instance open. */
  fusion_lock_name name = {.kind = 7, .a = 3, .b = 0};
  fusion_lock *lock = NULL;
  EXPECT(fusion_lock_acquire(db, &name, FUSION_LOCK_EX, 10000, &lock), FUSION_OK);
  EXPECT(fusion_close(db), FUSION_EBUSY);
  TRUE(strstr(fusion_errmsg(), "open") != NULL);
  fusion_lock_release(lock);

  EXPECT(fusion_close(db), FUSION_OK);
  EXPECT(fusion_close(db), FUSION_OK);
  fusion_txn *txn = NULL;
  EXPECT(fusion_txn_begin(db, &txn), FUSION_ECLOSED);
  EXPECT(fusion_block_txn_begin(db, &txn), FUSION_ECLOSED);
  TRUE(txn == NULL);
  fusion_stats stats;
  EXPECT(fusion_instance_stats(db, &stats), FUSION_ECLOSED);
  EXPECT(fusion_checkpoint(db), FUSION_ECLOSED);
  uint64_t block;
  EXPECT(fusion_block_alloc(db, &block), FUSION_ECLOSED);
  EXPECT(fusion_lock_acquire(db, &name, FUSION_LOCK_EX, 1000, &lock), FUSION_ECLOSED);
  TRUE(strcmp(fusion_errmsg(), "the instance is closed") == 0);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s GOOD_CONFIG BAD_CONFIG\n", argv[0]);
    return 2;
  }
  TRUE(strcmp(fusion_strerror(FUSION_ETXNDONE), "the transaction is used up") == 0);
  TRUE(strcmp(fusion_strerror(12345), "unknown code") == 0);
  TRUE(fusion_abi_version() == FUSION_ABI_VERSION);

  fusion_instance *db = (fusion_instance *)1;
  EXPECT(fusion_open(NULL, &db), FUSION_EINVAL);
  TRUE(db == NULL);
  EXPECT(fusion_open(argv[1], NULL), FUSION_EINVAL);
  EXPECT(fusion_open(argv[2], &db), FUSION_ECONFIG);
  TRUE(db == NULL);
  TRUE(strstr(fusion_errmsg(), argv[2]) != NULL);
  EXPECT(fusion_open("/nonexistent/fusion.toml", &db), FUSION_ECONFIG);

  EXPECT(fusion_open(argv[1], &db), FUSION_OK);
  if (db == NULL) {
    return 1;
  }
  null_arguments(db);
  block_calls(db);
  kv_calls(db);
  closed_instance(db);
  fusion_free(db);
  if (failures) {
    fprintf(stderr, "%d failures\n", failures);
    return 1;
  }
  printf("ok\n");
  return 0;
}
