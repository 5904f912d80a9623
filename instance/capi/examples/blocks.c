/* blocks.c: an engine with its own format on Fusion blocks: allocate a block, change bytes
 * in it in a transaction (X), read it back (S), and publish its number in a lock's value
 * block, where any instance of the cluster finds it.
 *
 *   cc blocks.c $(pkg-config --cflags --libs fusion) -o blocks && ./blocks instance-0.toml
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
  uint64_t blocks;
  size_t payload;
  CHECK(fusion_block_info(db, &blocks, &payload));
  printf("%llu blocks of %zu payload bytes\n", (unsigned long long)blocks, payload);

  uint64_t block;
  CHECK(fusion_block_alloc(db, &block));

  /* Increment a counter at offset 0 and stamp the last bytes, in one transaction. */
  for (int round = 0; round < 3; round++) {
    fusion_txn *txn = NULL;
    CHECK(fusion_block_txn_begin(db, &txn));
    uint64_t counter;
    CHECK(fusion_block_write(txn, block, 0, (uint8_t *)&counter, sizeof counter));
    counter++;
    CHECK(fusion_block_update(txn, block, 0, (const uint8_t *)&counter, sizeof counter));
    CHECK(fusion_block_update(txn, block, payload - 4, (const uint8_t *)"tail", 4));
    CHECK(fusion_txn_commit(txn));
    fusion_txn_free(txn);
  }
  /* An aborted change leaves nothing behind. */
  fusion_txn *txn = NULL;
  CHECK(fusion_block_txn_begin(db, &txn));
  uint64_t junk = 999;
  CHECK(fusion_block_update(txn, block, 0, (const uint8_t *)&junk, sizeof junk));
  CHECK(fusion_txn_abort(txn));
  fusion_txn_free(txn);

  uint64_t counter;
  char tail[4];
  CHECK(fusion_block_read(db, block, 0, (uint8_t *)&counter, sizeof counter));
  CHECK(fusion_block_read(db, block, payload - 4, (uint8_t *)tail, sizeof tail));
  printf("block %llu: counter %llu, tail %.4s\n", (unsigned long long)block,
         (unsigned long long)counter, tail);
  if (counter != 3 || memcmp(tail, "tail", 4) != 0) {
    fprintf(stderr, "block %llu: wrong contents\n", (unsigned long long)block);
    return 1;
  }

  /* Publish the block's number in the value block of lock (kind 7, 1, 0). */
  fusion_lock_name name = {.kind = 7, .a = 1, .b = 0};
  fusion_lock *lock = NULL;
  CHECK(fusion_lock_acquire(db, &name, FUSION_LOCK_EX, 10000, &lock));
  uint8_t value[FUSION_LOCK_VALUE_LEN] = {0};
  memcpy(value, &block, sizeof block);
  CHECK(fusion_lock_set_value(lock, value));
  fusion_lock_release(lock);

  CHECK(fusion_lock_acquire(db, &name, FUSION_LOCK_PR, 10000, &lock));
  fusion_lock_value got;
  CHECK(fusion_lock_get_value(lock, &got));
  fusion_lock_release(lock);
  uint64_t published;
  memcpy(&published, got.bytes, sizeof published);
  printf("lock value: valid %d, block %llu\n", got.valid, (unsigned long long)published);
  if (!got.valid || published != block) {
    fprintf(stderr, "the lock value block does not hold the block number\n");
    return 1;
  }

  fusion_stats stats;
  CHECK(fusion_instance_stats(db, &stats));
  printf("epoch %llu, members 0x%llx, commits %llu, grants %llu\n",
         (unsigned long long)stats.epoch, (unsigned long long)stats.members,
         (unsigned long long)stats.commits,
         (unsigned long long)stats.transfers[FUSION_TRANSFER_GRANT].count);
  if (stats.commits < 4) {
    fprintf(stderr, "stats: %llu commits, expected at least 4\n",
            (unsigned long long)stats.commits);
    return 1;
  }
  printf("ok\n");
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s CONFIG\n", argv[0]);
    return 2;
  }
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
