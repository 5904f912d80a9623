//! The on-block format of the KV layer, byte by byte: the superblock, the free-list head,
//! free blocks, overflow blocks and B+tree nodes (leaves and internal nodes with their fence
//! keys).
//!
//! This module owns the pure codec: [`encode`] of a [`Block`] into a block payload and
//! [`decode`] of payload bytes back, which checks every length, tag, order and bound and
//! returns a [`DecodeError`] for anything else. It must never panic on bytes it is given (they
//! come from storage, or from a block a stale pointer led to), never touch an instance, and
//! never allocate more than the payload it reads.
//!
//! Layout (little-endian; offsets into the payload):
//!
//! | block | bytes |
//! |---|---|
//! | superblock | tag `0xA1` @0, version @1, magic @8, root @16, free-list head block @24 |
//! | free-list head | tag `0xA2` @0, first free block @8 (0: none), free blocks @16 |
//! | free | tag `0xA6` @0, next free block @8 |
//! | overflow | tag `0xA5` @0, bytes used u32 @4, next block of the chain (or of the free list once freed) @8, data @16 |
//! | node | tag `0xA3` (leaf) or `0xA4` (internal) @0, level u8 @1 (0: leaf), entries u16 @2, zero u32 @4, low fence (u16 length, bytes), high fence (u8 present, then u16 length, bytes), entries |
//!
//! A leaf entry is `key (u16 length, bytes)`, then `0` and the value (`u32` length, bytes) when
//! inline, or `1` and the overflow chain (`u64` length, first and last block). An internal
//! node holds its first child (`u64`), then per entry a separator key (`u16` length, bytes)
//! and the child (`u64`) that holds keys from that separator on. Fences bound the keys a node
//! covers: the low fence inclusive, the high fence exclusive (absent: no bound); keys in a
//! node are strictly ascending and within its fences.

/// The superblock's magic number ("FUSIONKV").
pub const MAGIC: u64 = u64::from_le_bytes(*b"FUSIONKV");
/// The format version this code writes and reads.
pub const VERSION: u8 = 1;

const TAG_SUPER: u8 = 0xA1;
const TAG_FREE_LIST: u8 = 0xA2;
const TAG_LEAF: u8 = 0xA3;
const TAG_INTERNAL: u8 = 0xA4;
const TAG_OVERFLOW: u8 = 0xA5;
const TAG_FREE: u8 = 0xA6;

/// Bytes of a node before its low fence (tag, level, entries, reserved).
pub const NODE_HEADER: usize = 8;
/// Bytes of an overflow block before its data.
pub const OVERFLOW_HEADER: usize = 16;
/// The most levels a tree may have (a leaf is level 0).
pub const MAX_LEVEL: u8 = 32;

/// A decoded block of the KV layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// Where the tree and the free list are.
    Super {
        /// The root node's block (it never moves).
        root: u64,
        /// The free-list head's block.
        free_list: u64,
    },
    /// The head of the list of free blocks.
    FreeList {
        /// The first free block, 0 when none.
        head: u64,
        /// Blocks on the list.
        count: u64,
    },
    /// A free block (a node freed by a merge).
    Free {
        /// The next free block, 0 at the end.
        next: u64,
    },
    /// A piece of a large value.
    Overflow {
        /// The next block of the chain (or, once freed, of the free list); 0 at the end.
        next: u64,
        /// The value's bytes held here.
        data: Vec<u8>,
    },
    /// A B+tree node.
    Node(Node),
}

/// A B+tree node: a leaf (level 0) or an internal node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// 0 for a leaf; a node's children are one level lower.
    pub level: u8,
    /// The smallest key this node covers (inclusive).
    pub low: Vec<u8>,
    /// The key this node's range ends before; `None`: no bound.
    pub high: Option<Vec<u8>>,
    /// What it holds.
    pub body: Body,
}

/// The contents of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Keys and their values, ascending.
    Leaf(Vec<(Vec<u8>, Value)>),
    /// `children[0]` holds keys below `keys[0]`; `children[i + 1]` holds keys from `keys[i]`
    /// on. `children.len() == keys.len() + 1`.
    Internal {
        /// Separators, ascending.
        keys: Vec<Vec<u8>>,
        /// Child blocks.
        children: Vec<u64>,
    },
}

/// A value as a leaf holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// The bytes themselves.
    Inline(Vec<u8>),
    /// A chain of overflow blocks.
    Overflow {
        /// The value's length.
        len: u64,
        /// The chain's first block.
        first: u64,
        /// The chain's last block (freeing links it to the free list in one write).
        last: u64,
    },
}

/// Why bytes are not a valid block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes end before the structure does.
    #[error("truncated at byte {0}")]
    Truncated(usize),
    /// An unknown tag (a block never written reads as zeros).
    #[error("unknown block tag {0:#x}")]
    Tag(u8),
    /// A field holds a value the format does not allow.
    #[error("{0}")]
    Invalid(&'static str),
}

impl Node {
    /// An empty leaf covering every key: a new tree's root.
    pub fn empty_root() -> Self {
        Self {
            level: 0,
            low: Vec::new(),
            high: None,
            body: Body::Leaf(Vec::new()),
        }
    }

    /// Whether `key` is within this node's fences.
    pub fn covers(&self, key: &[u8]) -> bool {
        key >= self.low.as_slice() && self.high.as_deref().is_none_or(|high| key < high)
    }

    /// Bytes [`encode`] writes for this node.
    pub fn encoded_len(&self) -> usize {
        let fences = 2 + self.low.len() + 1 + self.high.as_ref().map_or(0, |h| 2 + h.len());
        NODE_HEADER + fences + self.entries_len()
    }

    /// Whether the node holds nothing: a leaf without entries, or an internal node with a
    /// single child.
    pub fn is_empty(&self) -> bool {
        match &self.body {
            Body::Leaf(entries) => entries.is_empty(),
            Body::Internal { keys, .. } => keys.is_empty(),
        }
    }

    /// Bytes of the entries alone (what a node holds, not where it is).
    pub fn entries_len(&self) -> usize {
        match &self.body {
            Body::Leaf(entries) => entries.iter().map(|(k, v)| leaf_entry_len(k, v)).sum(),
            Body::Internal { keys, .. } => {
                8 + keys.iter().map(|k| internal_entry_len(k)).sum::<usize>()
            }
        }
    }

    /// The child of an internal node that covers `key` and its index; `None` for a leaf.
    pub fn child_for(&self, key: &[u8]) -> Option<(usize, u64)> {
        match &self.body {
            Body::Leaf(_) => None,
            Body::Internal { keys, children } => {
                let index = keys.partition_point(|k| k.as_slice() <= key);
                children.get(index).map(|&c| (index, c))
            }
        }
    }
}

/// Bytes a leaf entry takes.
pub fn leaf_entry_len(key: &[u8], value: &Value) -> usize {
    2 + key.len()
        + 1
        + match value {
            Value::Inline(v) => 4 + v.len(),
            Value::Overflow { .. } => 24,
        }
}

/// Bytes an internal entry (separator and child) takes.
pub fn internal_entry_len(key: &[u8]) -> usize {
    2 + key.len() + 8
}

/// Encodes `block` into the start of a payload (the rest of the payload is left to the
/// caller). Fails when it does not fit in `payload_len` bytes or a length does not fit its
/// field.
pub fn encode(block: &Block, payload_len: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(64);
    match block {
        Block::Super { root, free_list } => {
            out.push(TAG_SUPER);
            out.push(VERSION);
            out.resize(8, 0);
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.extend_from_slice(&root.to_le_bytes());
            out.extend_from_slice(&free_list.to_le_bytes());
        }
        Block::FreeList { head, count } => {
            out.push(TAG_FREE_LIST);
            out.resize(8, 0);
            out.extend_from_slice(&head.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
        }
        Block::Free { next } => {
            out.push(TAG_FREE);
            out.resize(8, 0);
            out.extend_from_slice(&next.to_le_bytes());
        }
        Block::Overflow { next, data } => {
            out.push(TAG_OVERFLOW);
            out.resize(4, 0);
            let used = u32::try_from(data.len()).map_err(|_| DecodeError::Invalid("too long"))?;
            out.extend_from_slice(&used.to_le_bytes());
            out.extend_from_slice(&next.to_le_bytes());
            out.extend_from_slice(data);
        }
        Block::Node(node) => encode_node(node, &mut out)?,
    }
    if out.len() > payload_len {
        return Err(DecodeError::Invalid("the block does not fit its payload"));
    }
    Ok(out)
}

fn put_key(out: &mut Vec<u8>, key: &[u8]) -> Result<(), DecodeError> {
    let len = u16::try_from(key.len()).map_err(|_| DecodeError::Invalid("key too long"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(key);
    Ok(())
}

fn encode_node(node: &Node, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let (tag, count) = match &node.body {
        Body::Leaf(entries) => (TAG_LEAF, entries.len()),
        Body::Internal { keys, .. } => (TAG_INTERNAL, keys.len()),
    };
    let count = u16::try_from(count).map_err(|_| DecodeError::Invalid("too many entries"))?;
    out.push(tag);
    out.push(node.level);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    put_key(out, &node.low)?;
    match &node.high {
        Some(high) => {
            out.push(1);
            put_key(out, high)?;
        }
        None => out.push(0),
    }
    match &node.body {
        Body::Leaf(entries) => {
            for (key, value) in entries {
                put_key(out, key)?;
                match value {
                    Value::Inline(v) => {
                        out.push(0);
                        let len = u32::try_from(v.len())
                            .map_err(|_| DecodeError::Invalid("value too long"))?;
                        out.extend_from_slice(&len.to_le_bytes());
                        out.extend_from_slice(v);
                    }
                    Value::Overflow { len, first, last } => {
                        out.push(1);
                        out.extend_from_slice(&len.to_le_bytes());
                        out.extend_from_slice(&first.to_le_bytes());
                        out.extend_from_slice(&last.to_le_bytes());
                    }
                }
            }
        }
        Body::Internal { keys, children } => {
            if children.len() != keys.len() + 1 {
                return Err(DecodeError::Invalid("children do not match separators"));
            }
            let mut children = children.iter();
            if let Some(first) = children.next() {
                out.extend_from_slice(&first.to_le_bytes());
            }
            for (key, child) in keys.iter().zip(children) {
                put_key(out, key)?;
                out.extend_from_slice(&child.to_le_bytes());
            }
        }
    }
    Ok(())
}

/// Reads fields from payload bytes, every read bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(DecodeError::Truncated(self.at))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let mut raw = [0; 2];
        raw.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(raw))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut raw = [0; 4];
        raw.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(raw))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut raw = [0; 8];
        raw.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(raw))
    }

    fn key(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u16()? as usize;
        self.take(len)
    }

    fn block(&mut self) -> Result<u64, DecodeError> {
        match self.u64()? {
            0 => Err(DecodeError::Invalid("a block pointer is zero")),
            b => Ok(b),
        }
    }
}

/// Decodes a block payload.
pub fn decode(bytes: &[u8]) -> Result<Block, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    let tag = r.u8()?;
    match tag {
        TAG_SUPER => {
            if r.u8()? != VERSION {
                return Err(DecodeError::Invalid("unknown superblock version"));
            }
            r.take(6)?;
            if r.u64()? != MAGIC {
                return Err(DecodeError::Invalid("bad superblock magic"));
            }
            Ok(Block::Super {
                root: r.block()?,
                free_list: r.block()?,
            })
        }
        TAG_FREE_LIST => {
            r.take(7)?;
            Ok(Block::FreeList {
                head: r.u64()?,
                count: r.u64()?,
            })
        }
        TAG_FREE => {
            r.take(7)?;
            Ok(Block::Free { next: r.u64()? })
        }
        TAG_OVERFLOW => {
            r.take(3)?;
            let used = r.u32()? as usize;
            let next = r.u64()?;
            Ok(Block::Overflow {
                next,
                data: r.take(used)?.to_vec(),
            })
        }
        TAG_LEAF | TAG_INTERNAL => decode_node(tag, &mut r).map(Block::Node),
        other => Err(DecodeError::Tag(other)),
    }
}

/// A node's header and fences, read and checked.
struct NodeHead<'a> {
    level: u8,
    count: usize,
    low: &'a [u8],
    high: Option<&'a [u8]>,
}

impl NodeHead<'_> {
    fn covers(&self, key: &[u8]) -> bool {
        key >= self.low && self.high.is_none_or(|high| key < high)
    }
}

fn decode_head<'a>(tag: u8, r: &mut Reader<'a>) -> Result<NodeHead<'a>, DecodeError> {
    let level = r.u8()?;
    if (tag == TAG_LEAF) != (level == 0) || level > MAX_LEVEL {
        return Err(DecodeError::Invalid("node level does not match its kind"));
    }
    let count = r.u16()? as usize;
    if r.u32()? != 0 {
        return Err(DecodeError::Invalid("reserved node bytes are not zero"));
    }
    let low = r.key()?;
    let high = match r.u8()? {
        0 => None,
        1 => Some(r.key()?),
        _ => return Err(DecodeError::Invalid("bad high-fence flag")),
    };
    if high.is_some_and(|h| h <= low) {
        return Err(DecodeError::Invalid("fences out of order"));
    }
    Ok(NodeHead {
        level,
        count,
        low,
        high,
    })
}

/// Checks that `key` follows `previous` and lies within the node's fences; a separator
/// equal to the low fence would leave its left child an empty range.
/// Checks `key`, the next of a node's keys in order: above the one before (`previous`), and
/// the first inside the fences. [`check_last`] after the last: inside, the first and the last
/// put every key between inside too (two comparisons per node, not two per key).
fn check_key<'a>(
    tag: u8,
    head: &NodeHead<'_>,
    previous: &mut Option<&'a [u8]>,
    key: &'a [u8],
) -> Result<(), DecodeError> {
    let fits = match *previous {
        Some(before) => before < key,
        None => inside(tag, head, key),
    };
    *previous = Some(key);
    if fits { Ok(()) } else { Err(out_of_order()) }
}

/// The last key [`check_key`] saw (if any) is inside the fences.
fn check_last(tag: u8, head: &NodeHead<'_>, last: Option<&[u8]>) -> Result<(), DecodeError> {
    match last {
        Some(key) if !inside(tag, head, key) => Err(out_of_order()),
        _ => Ok(()),
    }
}

/// Whether a key of the node lies inside its fences (an internal node's separators above
/// its low fence).
fn inside(tag: u8, head: &NodeHead<'_>, key: &[u8]) -> bool {
    head.covers(key) && (tag == TAG_LEAF || key > head.low)
}

fn out_of_order() -> DecodeError {
    DecodeError::Invalid("keys out of order or outside the fences")
}

fn decode_node(tag: u8, r: &mut Reader<'_>) -> Result<Node, DecodeError> {
    let head = decode_head(tag, r)?;
    let mut previous = None;
    let body = if tag == TAG_LEAF {
        // Each entry takes at least 7 bytes: a count beyond what the bytes hold is refused
        // before anything is reserved for it.
        let mut entries = Vec::with_capacity(head.count.min(r.bytes.len() / 7));
        for _ in 0..head.count {
            let key = r.key()?;
            check_key(tag, &head, &mut previous, key)?;
            let value = match r.u8()? {
                0 => {
                    let len = r.u32()? as usize;
                    Value::Inline(r.take(len)?.to_vec())
                }
                1 => Value::Overflow {
                    len: r.u64()?,
                    first: r.block()?,
                    last: r.block()?,
                },
                _ => return Err(DecodeError::Invalid("bad value kind")),
            };
            entries.push((key.to_vec(), value));
        }
        check_last(tag, &head, previous)?;
        Body::Leaf(entries)
    } else {
        let mut keys = Vec::with_capacity(head.count.min(r.bytes.len() / 10));
        let mut children = Vec::with_capacity(keys.capacity() + 1);
        children.push(r.block()?);
        for _ in 0..head.count {
            let key = r.key()?;
            check_key(tag, &head, &mut previous, key)?;
            keys.push(key.to_vec());
            children.push(r.block()?);
        }
        check_last(tag, &head, previous)?;
        Body::Internal { keys, children }
    };
    Ok(Node {
        level: head.level,
        low: head.low.to_vec(),
        high: head.high.map(<[u8]>::to_vec),
        body,
    })
}

/// Where a descent goes from a node, read from its bytes without building the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The node's level.
    pub level: u8,
    /// Whether its fences cover the key.
    pub covers: bool,
    /// The child covering the key (internal nodes that cover it); `None` for a leaf.
    pub child: Option<u64>,
}

/// The [`Route`] from the node in `bytes` towards `key`, with the checks [`decode`] makes
/// of the node's header, fences and separators (the entries of a leaf are not read). Fails
/// on bytes that are not a node.
pub fn route(bytes: &[u8], key: &[u8]) -> Result<Route, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    let tag = r.u8()?;
    if tag != TAG_LEAF && tag != TAG_INTERNAL {
        return Err(DecodeError::Tag(tag));
    }
    let head = decode_head(tag, &mut r)?;
    let covers = head.covers(key);
    if tag == TAG_LEAF || !covers {
        return Ok(Route {
            level: head.level,
            covers,
            child: None,
        });
    }
    let mut previous = None;
    let mut child = r.block()?;
    let mut found = false;
    for _ in 0..head.count {
        let separator = r.key()?;
        check_key(tag, &head, &mut previous, separator)?;
        let next = r.block()?;
        if !found && separator <= key {
            child = next;
        } else {
            found = true;
        }
    }
    check_last(tag, &head, previous)?;
    Ok(Route {
        level: head.level,
        covers,
        child: Some(child),
    })
}

/// What a leaf holds for one key, read from its bytes without building the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafLookup {
    /// The leaf's low fence.
    pub low: Vec<u8>,
    /// Its high fence.
    pub high: Option<Vec<u8>>,
    /// The key's value, when the leaf holds the key.
    pub value: Option<Value>,
}

/// Looks `key` up in the leaf in `bytes`, with every check [`decode`] makes of a leaf, and
/// copies only the fences and the value found (a decode allocates two buffers per entry).
/// `Ok(None)` when the bytes are a node that is not a leaf or a leaf whose fences do not
/// cover the key; an error when they are not a node [`decode`] accepts.
pub fn leaf_lookup(bytes: &[u8], key: &[u8]) -> Result<Option<LeafLookup>, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    let tag = r.u8()?;
    if tag != TAG_LEAF && tag != TAG_INTERNAL {
        return Err(DecodeError::Tag(tag));
    }
    if tag == TAG_INTERNAL {
        // Checked as a decode would, then not a leaf.
        return decode_node(tag, &mut r).map(|_| None);
    }
    let head = decode_head(tag, &mut r)?;
    let mut previous = None;
    let mut value = None;
    for _ in 0..head.count {
        let entry = r.key()?;
        check_key(tag, &head, &mut previous, entry)?;
        let found = entry == key;
        match r.u8()? {
            0 => {
                let len = r.u32()? as usize;
                let bytes = r.take(len)?;
                if found {
                    value = Some(Value::Inline(bytes.to_vec()));
                }
            }
            1 => {
                let chain = Value::Overflow {
                    len: r.u64()?,
                    first: r.block()?,
                    last: r.block()?,
                };
                if found {
                    value = Some(chain);
                }
            }
            _ => return Err(DecodeError::Invalid("bad value kind")),
        }
    }
    check_last(tag, &head, previous)?;
    if !head.covers(key) {
        return Ok(None);
    }
    Ok(Some(LeafLookup {
        low: head.low.to_vec(),
        high: head.high.map(<[u8]>::to_vec),
        value,
    }))
}

/// Whether `bytes` are tagged as a leaf (what they hold is checked by [`decode`] and
/// [`leaf_put_inline`]).
pub fn is_leaf(bytes: &[u8]) -> bool {
    bytes.first() == Some(&TAG_LEAF)
}

/// What [`leaf_put_inline`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeafPut {
    /// Not a leaf whose fences cover the key.
    NotCovering,
    /// The key already holds this very value inline.
    Unchanged,
    /// The key holds an overflow chain (its blocks must be freed: not a change in place).
    Chain,
    /// The leaf with the entry set would not fit the payload (it must split).
    TooLarge,
    /// The change to make to the leaf's bytes.
    Put(LeafSplice),
}

/// A change of a leaf's bytes in place ([`leaf_put_inline`]): only the bytes that change, so
/// the caller writes (and logs) those rather than the whole leaf or a diff of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSplice {
    /// The new entry count (bytes 2..4) when it changes (a new key).
    pub count: Option<u16>,
    /// Where the changed bytes start.
    pub at: usize,
    /// The new bytes from `at` on: a new value of the same length alone, else the key's
    /// entry and every entry after it (moved).
    pub bytes: Vec<u8>,
    /// The leaf's length up to its last entry, after the change.
    pub len: usize,
}

impl LeafSplice {
    /// The leaf's new bytes (up to its last entry): `old` with the change made.
    pub fn apply(&self, old: &[u8]) -> Vec<u8> {
        let mut out = old[..self.at].to_vec();
        if let Some(count) = self.count {
            out[2..4].copy_from_slice(&count.to_le_bytes());
        }
        out.extend_from_slice(&self.bytes);
        if out.len() < self.len {
            out.extend_from_slice(&old[out.len()..self.len]);
        }
        out
    }
}

/// Sets `key` to the inline `value` in the leaf in `bytes` by splicing its entry in place,
/// with every check [`decode`] makes of the leaf: the splice applied gives what encoding the
/// decoded leaf with the entry set gives, without building the node (a decode allocates two
/// buffers per entry). An error when the bytes are not a node [`decode`] accepts.
pub fn leaf_put_inline(
    bytes: &[u8],
    key: &[u8],
    value: &[u8],
    payload_len: usize,
) -> Result<LeafPut, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    let tag = r.u8()?;
    if tag != TAG_LEAF && tag != TAG_INTERNAL {
        return Err(DecodeError::Tag(tag));
    }
    if tag == TAG_INTERNAL {
        return decode_node(tag, &mut r).map(|_| LeafPut::NotCovering);
    }
    let head = decode_head(tag, &mut r)?;
    let mut first: Option<&[u8]> = None;
    let mut previous: Option<&[u8]> = None;
    // Where the key's entry starts (or would), where it ends, and what it holds now (whether
    // its inline value is this one; `None`: a chain).
    let mut place: Option<(usize, usize, Option<bool>)> = None;
    for _ in 0..head.count {
        let start = r.at;
        let entry = r.key()?;
        // Ascending here; inside the fences is checked below for the first and the last
        // key, which bound the others (one key comparison per entry, not four).
        if previous.is_some_and(|p| p >= entry) {
            return Err(out_of_order());
        }
        first.get_or_insert(entry);
        previous = Some(entry);
        let order = place.is_none().then(|| entry.cmp(key));
        let inline = match r.u8()? {
            0 => {
                let len = r.u32()? as usize;
                Some(r.take(len)?)
            }
            1 => {
                r.u64()?;
                r.block()?;
                r.block()?;
                None
            }
            _ => return Err(DecodeError::Invalid("bad value kind")),
        };
        match order {
            Some(std::cmp::Ordering::Equal) => {
                place = Some((start, r.at, inline.map(|old| old == value)));
            }
            Some(std::cmp::Ordering::Greater) => place = Some((start, start, Some(false))),
            _ => {}
        }
    }
    if first.into_iter().chain(previous).any(|k| !head.covers(k)) {
        return Err(out_of_order());
    }
    if !head.covers(key) {
        return Ok(LeafPut::NotCovering);
    }
    let used = r.at;
    let (start, end, found) = match place {
        Some((start, end, found)) => (start, end, found.map(|same| (same, end > start))),
        None => (used, used, Some((false, false))),
    };
    let replaces = match found {
        None => return Ok(LeafPut::Chain),
        Some((true, true)) => return Ok(LeafPut::Unchanged),
        Some((_, replaces)) => replaces,
    };
    let key_len = u16::try_from(key.len()).map_err(|_| DecodeError::Invalid("key too long"))?;
    let value_len =
        u32::try_from(value.len()).map_err(|_| DecodeError::Invalid("value too long"))?;
    let entry_len = 2 + key.len() + 1 + 4 + value.len();
    let new_len = used - (end - start) + entry_len;
    if new_len > payload_len {
        return Ok(LeafPut::TooLarge);
    }
    if replaces && end - start == entry_len {
        // The same length: only the value's bytes change (key, kind and length stay).
        let at = end - value.len();
        return Ok(LeafPut::Put(LeafSplice {
            count: None,
            at,
            bytes: value.to_vec(),
            len: used,
        }));
    }
    let count = if replaces {
        None
    } else {
        Some(u16::try_from(head.count + 1).map_err(|_| DecodeError::Invalid("too many entries"))?)
    };
    let mut out = Vec::with_capacity(new_len - start);
    out.extend_from_slice(&key_len.to_le_bytes());
    out.extend_from_slice(key);
    out.push(0);
    out.extend_from_slice(&value_len.to_le_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(&bytes[end..used]);
    Ok(LeafPut::Put(LeafSplice {
        count,
        at: start,
        bytes: out,
        len: new_len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `node` encoded, with the key `from` replaced by `to` (of the same length).
    fn with_key_replaced(node: Node, from: &[u8], to: &[u8]) -> Vec<u8> {
        let mut bytes = encode(&Block::Node(node), 4096).unwrap();
        let at = bytes.windows(from.len()).rposition(|w| w == from).unwrap();
        bytes[at..at + to.len()].copy_from_slice(to);
        bytes
    }

    #[test]
    fn a_key_outside_the_fences_is_refused_first_or_last() {
        let leaf = |keys: &[&[u8]]| Node {
            level: 0,
            low: b"b".to_vec(),
            high: Some(b"m".to_vec()),
            body: Body::Leaf(
                keys.iter()
                    .map(|k| (k.to_vec(), Value::Inline(b"v".to_vec())))
                    .collect(),
            ),
        };
        let good = encode(&Block::Node(leaf(&[b"c1", b"d1", b"e1"])), 4096).unwrap();
        assert!(decode(&good).is_ok());
        assert!(leaf_lookup(&good, b"d1").unwrap().unwrap().value.is_some());
        // The last key above the high fence, the first below the low one (both ascending).
        for bad in [
            with_key_replaced(leaf(&[b"c1", b"d1", b"e1"]), b"e1", b"z1"),
            with_key_replaced(leaf(&[b"c1", b"d1", b"e1"]), b"c1", b"a1"),
        ] {
            assert_eq!(decode(&bad), Err(out_of_order()));
            assert_eq!(leaf_lookup(&bad, b"d1"), Err(out_of_order()));
        }
        // An internal node's last separator past its high fence.
        let internal = Node {
            level: 1,
            low: b"b".to_vec(),
            high: Some(b"m".to_vec()),
            body: Body::Internal {
                keys: vec![b"c1".to_vec(), b"e1".to_vec()],
                children: vec![10, 11, 12],
            },
        };
        let bad = with_key_replaced(internal, b"e1", b"z1");
        assert_eq!(decode(&bad), Err(out_of_order()));
        assert_eq!(route(&bad, b"c2"), Err(out_of_order()));
    }

    #[test]
    fn a_never_written_block_is_refused() {
        assert_eq!(decode(&[0u8; 64]), Err(DecodeError::Tag(0)));
    }

    #[test]
    fn child_for_follows_separators() {
        let node = Node {
            level: 1,
            low: Vec::new(),
            high: None,
            body: Body::Internal {
                keys: vec![b"b".to_vec(), b"d".to_vec()],
                children: vec![10, 11, 12],
            },
        };
        assert_eq!(node.child_for(b"a"), Some((0, 10)));
        assert_eq!(node.child_for(b"b"), Some((1, 11)));
        assert_eq!(node.child_for(b"c"), Some((1, 11)));
        assert_eq!(node.child_for(b"d"), Some((2, 12)));
        assert_eq!(node.child_for(b"zz"), Some((2, 12)));
    }
}
