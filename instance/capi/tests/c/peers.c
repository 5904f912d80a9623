/* peers.c: one of N instances, each a process on one shared file. Each writes keys and a
 * block of its own, then reads every other's; none closes before all have read all.
 *
 *   peers CONFIG ID N
 *
 * Phase 1: put keys "peer-ID-i"; allocate a block, write ID*1000+7 at offset 0, and publish
 * its number in the value block of lock (PEER_LOCK, ID). Then, for every other peer J,
 * wait until its lock value names a block holding J*1000+7 and its keys read back.
 * Phase 2 (a barrier on durable data): set the done byte at offset 8 of this peer's block,
 * wait until every other peer's block shows it, then close.
 */
#include <fusion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KEYS 10
#define PEER_LOCK 0x7a01
#define DEADLINE_S 180

#define CHECK(call)                                                                     \
  do {                                                                                  \
    int rc_ = (call);                                                                   \
    if (rc_ != FUSION_OK) {                                                             \
      fprintf(stderr, "peer %d: %s:%d: %s: %s (%s)\n", me, __FILE__, __LINE__, #call,  \
              fusion_strerror(rc_), fusion_errmsg());                                   \
      return 1;                                                                         \
    }                                                                                   \
  } while (0)

static int me;

static void pause_briefly(void) {
  struct timespec ts = {0, 50 * 1000 * 1000};
  nanosleep(&ts, NULL);
}

static int put_keys(fusion_instance *db) {
  for (int attempt = 0;; attempt++) {
    fusion_txn *txn = NULL;
    CHECK(fusion_txn_begin(db, &txn));
    int rc = FUSION_OK;
    for (int i = 0; i < KEYS && rc == FUSION_OK; i++) {
      char key[32], value[32];
      int klen = snprintf(key, sizeof key, "peer-%d-%d", me, i);
      int vlen = snprintf(value, sizeof value, "value %d of peer %d", i, me);
      rc = fusion_put(txn, (uint8_t *)key, (size_t)klen, (uint8_t *)value, (size_t)vlen);
    }
    if (rc == FUSION_OK) {
      rc = fusion_txn_commit(txn);
    }
    fusion_txn_free(txn);
    if (rc == FUSION_OK) {
      return 0;
    }
    if (rc != FUSION_ERETRY || attempt > 50) {
      fprintf(stderr, "peer %d: put: %s (%s)\n", me, fusion_strerror(rc), fusion_errmsg());
      return 1;
    }
  }
}

/* 1 when every key of `peer` reads back, 0 when some are missing, -1 on an error. */
static int keys_of(fusion_instance *db, int peer) {
  fusion_txn *txn = NULL;
  if (fusion_txn_begin(db, &txn) != FUSION_OK) {
    return -1;
  }
  int found = 1;
  for (int i = 0; i < KEYS && found == 1; i++) {
    char key[32], expected[32], value[32];
    int klen = snprintf(key, sizeof key, "peer-%d-%d", peer, i);
    int elen = snprintf(expected, sizeof expected, "value %d of peer %d", i, peer);
    size_t len = 0;
    int rc = fusion_get(txn, (uint8_t *)key, (size_t)klen, (uint8_t *)value, sizeof value, &len);
    if (rc == FUSION_ENOTFOUND || rc == FUSION_ERETRY) {
      found = 0;
    } else if (rc != FUSION_OK || len != (size_t)elen || memcmp(value, expected, len) != 0) {
      fprintf(stderr, "peer %d: key %s: %s, %zu bytes\n", me, key, fusion_strerror(rc), len);
      found = -1;
    }
  }
  fusion_txn_free(txn);
  return found;
}

/* The block `peer` published, or 0 while it has not. */
static uint64_t block_of(fusion_instance *db, int peer) {
  fusion_lock_name name = {.kind = PEER_LOCK, .a = (uint64_t)peer, .b = 0};
  fusion_lock *lock = NULL;
  if (fusion_lock_acquire(db, &name, FUSION_LOCK_PR, 1000, &lock) != FUSION_OK) {
    return 0;
  }
  fusion_lock_value value;
  uint64_t block = 0;
  if (fusion_lock_get_value(lock, &value) == FUSION_OK && value.valid) {
    memcpy(&block, value.bytes, sizeof block);
  }
  fusion_lock_release(lock);
  return block;
}

static int set_block(fusion_instance *db, uint64_t block, size_t offset, uint64_t value) {
  fusion_txn *txn = NULL;
  CHECK(fusion_block_txn_begin(db, &txn));
  CHECK(fusion_block_update(txn, block, offset, (uint8_t *)&value, sizeof value));
  CHECK(fusion_txn_commit(txn));
  fusion_txn_free(txn);
  return 0;
}

static int run(fusion_instance *db, int n) {
  time_t deadline = time(NULL) + DEADLINE_S;
  if (put_keys(db)) {
    return 1;
  }
  uint64_t mine;
  CHECK(fusion_block_alloc(db, &mine));
  if (set_block(db, mine, 0, (uint64_t)me * 1000 + 7)) {
    return 1;
  }
  fusion_lock_name name = {.kind = PEER_LOCK, .a = (uint64_t)me, .b = 0};
  fusion_lock *lock = NULL;
  CHECK(fusion_lock_acquire(db, &name, FUSION_LOCK_EX, 30000, &lock));
  uint8_t value[FUSION_LOCK_VALUE_LEN] = {0};
  memcpy(value, &mine, sizeof mine);
  CHECK(fusion_lock_set_value(lock, value));
  fusion_lock_release(lock);

  uint64_t blocks[64] = {0};
  for (int peer = 0; peer < n; peer++) {
    if (peer == me) {
      continue;
    }
    for (;;) {
      if (time(NULL) > deadline) {
        fprintf(stderr, "peer %d: peer %d's data did not show up\n", me, peer);
        return 1;
      }
      if (blocks[peer] == 0) {
        blocks[peer] = block_of(db, peer);
      }
      uint64_t stamp = 0;
      if (blocks[peer] != 0) {
        CHECK(fusion_block_read(db, blocks[peer], 0, (uint8_t *)&stamp, sizeof stamp));
      }
      int keys = keys_of(db, peer);
      if (keys < 0) {
        return 1;
      }
      if (stamp == (uint64_t)peer * 1000 + 7 && keys == 1) {
        printf("peer %d: read peer %d's block %llu and keys\n", me, peer,
               (unsigned long long)blocks[peer]);
        break;
      }
      pause_briefly();
    }
  }
  fflush(stdout);

  if (set_block(db, mine, 8, 1)) {
    return 1;
  }
  for (int peer = 0; peer < n; peer++) {
    uint64_t done = 0;
    while (peer != me && done != 1) {
      if (time(NULL) > deadline) {
        fprintf(stderr, "peer %d: peer %d did not finish\n", me, peer);
        return 1;
      }
      CHECK(fusion_block_read(db, blocks[peer], 8, (uint8_t *)&done, sizeof done));
      if (done != 1) {
        pause_briefly();
      }
    }
  }
  printf("peer %d: done\n", me);
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s CONFIG ID N\n", argv[0]);
    return 2;
  }
  me = atoi(argv[2]);
  int n = atoi(argv[3]);
  if (n < 1 || n > 64 || me < 0 || me >= n) {
    fprintf(stderr, "bad ID or N\n");
    return 2;
  }
  fusion_instance *db = NULL;
  CHECK(fusion_open(argv[1], &db));
  int failed = run(db, n);
  int rc = fusion_close(db);
  if (rc != FUSION_OK) {
    fprintf(stderr, "fusion_close: %s (%s)\n", fusion_strerror(rc), fusion_errmsg());
    failed = 1;
  }
  fusion_free(db);
  return failed;
}
