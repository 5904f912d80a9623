//! Lock names and the six classic lock modes, with their compatibility and conversion rules.
//!
//! This module owns the mode lattice and nothing else: it must never know about queues,
//! instances or messages. The tables are tested from `tests/testdata/*.txt`.

use grd::ResourceId;
use std::fmt;

/// A lock's name. `(kind, a)` is the unit of mastership and remastering (one master for all
/// `b` of one `(kind, a)`); spread unrelated locks over different `a` to spread masters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockName {
    /// Lock type (recovery enqueue, row lock, ...).
    pub kind: u16,
    /// First identifier (e.g. a table).
    pub a: u64,
    /// Second identifier (e.g. a row).
    pub b: u64,
}

impl LockName {
    /// A lock name.
    pub const fn new(kind: u16, a: u64, b: u64) -> Self {
        Self { kind, a, b }
    }

    /// The directory's resource for this lock.
    #[inline]
    pub const fn resource(self) -> ResourceId {
        ResourceId::new(self.kind, self.a, self.b)
    }

    /// The lock named by a resource.
    #[inline]
    pub const fn from_resource(r: ResourceId) -> Self {
        Self::new(r.kind, r.object, r.item)
    }
}

impl fmt::Debug for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}:{}:{}", self.kind, self.a, self.b)
    }
}

/// The six lock modes, weakest first.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
#[repr(u8)]
pub enum LockMode {
    /// NL: no access; keeps the lock (and its value block) known.
    Null = 0,
    /// CR: read, others may write.
    ConcurrentRead = 1,
    /// CW: write, others may read and write (e.g. a shared counter).
    ConcurrentWrite = 2,
    /// PR: read, no writers.
    ProtectedRead = 3,
    /// PW: write, others may only concurrent-read.
    ProtectedWrite = 4,
    /// EX: sole access.
    Exclusive = 5,
}

/// How a conversion from one mode to another is handled.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Conversion {
    /// The same mode.
    Same,
    /// Weaker: granted at once.
    Down,
    /// Needs the master's grant.
    Up,
}

/// Compatibility bitmaps: bit `m` of `COMPAT[h]` is set when `m` may be granted while `h` is.
const COMPAT: [u8; 6] = [
    0b11_1111, // NL: everything
    0b01_1111, // CR: all but EX
    0b00_0111, // CW: NL CR CW
    0b00_1011, // PR: NL CR PR
    0b00_0011, // PW: NL CR
    0b00_0001, // EX: NL
];

impl LockMode {
    /// All modes, weakest first.
    pub const ALL: [LockMode; 6] = [
        LockMode::Null,
        LockMode::ConcurrentRead,
        LockMode::ConcurrentWrite,
        LockMode::ProtectedRead,
        LockMode::ProtectedWrite,
        LockMode::Exclusive,
    ];

    /// The mode with wire value `raw`.
    pub const fn from_u8(raw: u8) -> Option<LockMode> {
        match raw {
            0 => Some(LockMode::Null),
            1 => Some(LockMode::ConcurrentRead),
            2 => Some(LockMode::ConcurrentWrite),
            3 => Some(LockMode::ProtectedRead),
            4 => Some(LockMode::ProtectedWrite),
            5 => Some(LockMode::Exclusive),
            _ => None,
        }
    }

    /// The classic abbreviation (NL, CR, CW, PR, PW, EX).
    pub const fn abbreviation(self) -> &'static str {
        ["NL", "CR", "CW", "PR", "PW", "EX"][self as usize]
    }

    /// The mode with abbreviation `s`.
    pub fn from_abbreviation(s: &str) -> Option<LockMode> {
        Self::ALL.into_iter().find(|m| m.abbreviation() == s)
    }

    /// Whether `self` and `other` may be held at once by different instances.
    #[inline]
    pub const fn compatible(self, other: LockMode) -> bool {
        COMPAT[self as usize] & (1 << other as u8) != 0
    }

    /// Whether holding `self` gives at least the access of `other`: every mode compatible
    /// with `self` is compatible with `other`.
    #[inline]
    pub const fn covers(self, other: LockMode) -> bool {
        COMPAT[self as usize] & !COMPAT[other as usize] == 0
    }

    /// The weakest mode that covers both `self` and `other`.
    ///
    /// Only PR and CW are incomparable (their join is PW). A conversion between them is
    /// asked for as PW: while the grant travels, the master already counts the new mode, so
    /// the new mode must cover the old one, or another instance could be granted a mode that
    /// conflicts with what this holder still believes it holds.
    pub const fn join(self, other: LockMode) -> LockMode {
        let mut index = 0;
        while index < Self::ALL.len() {
            let candidate = Self::ALL[index];
            if candidate.covers(self) && candidate.covers(other) {
                return candidate;
            }
            index += 1;
        }
        LockMode::Exclusive
    }

    /// How converting from `self` to `to` is handled.
    pub const fn conversion(self, to: LockMode) -> Conversion {
        if self as u8 == to as u8 {
            Conversion::Same
        } else if self.covers(to) {
            Conversion::Down
        } else {
            Conversion::Up
        }
    }

    /// Whether releasing or down-converting from this mode writes the value block (PW, EX).
    #[inline]
    pub const fn writes_value(self) -> bool {
        matches!(self, LockMode::ProtectedWrite | LockMode::Exclusive)
    }
}
