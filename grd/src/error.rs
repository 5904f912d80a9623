//! Errors of the directory's local API. Wire errors are [`crate::DecodeError`].

use crate::ObjectId;
use interconnect::InstanceId;

/// Why a directory operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrdError {
    /// The bucket count must be a power of two in `2..=2^24`.
    #[error("bucket count {0} is not a power of two in 2..=16777216")]
    BadBucketCount(u32),
    /// Virtual nodes per instance must be in `1..=4096`.
    #[error("virtual nodes per instance {0} out of range 1..=4096")]
    BadVirtualNodes(u32),
    /// A map needs at least one member.
    #[error("a bucket map needs at least one member")]
    NoMembers,
    /// This instance is not in the membership it was given.
    #[error("instance {0} is not a member of the epoch it was given")]
    NotAMember(InstanceId),
    /// Remastering needs this instance to master the object.
    #[error("object {object:?} is mastered by {master}, not by this instance")]
    NotMaster {
        /// The object.
        object: ObjectId,
        /// Its master.
        master: InstanceId,
    },
    /// The object is already being remastered.
    #[error("object {0:?} is already being remastered")]
    AlreadyRemastering(ObjectId),
    /// The target is not a member, or is this instance.
    #[error("instance {0} cannot become a master here")]
    BadTarget(InstanceId),
    /// Too many objects are being remastered at once.
    #[error("too many remasters in progress (limit {0})")]
    TooManyRemasters(usize),
    /// The object's override version is at its maximum (a peer announced it so): it cannot
    /// move again in this epoch.
    #[error("object {0:?} has no override version left in this epoch")]
    VersionsExhausted(ObjectId),
}
