//! NBD protocol constants (NetworkBlockDevice/nbd `doc/proto.md`).

/// "NBDMAGIC", first thing the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": the newstyle magic, and the magic of each option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of an option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request (compact header).
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flag: fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Handshake flag: no 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 2;
/// Client flag: fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1;
/// Client flag: no zeroes.
pub const FLAG_C_NO_ZEROES: u32 = 2;

/// Option: enter transmission with this export name (cannot fail).
pub const OPT_EXPORT_NAME: u32 = 1;
/// Option: end negotiation.
pub const OPT_ABORT: u32 = 2;
/// Option: list exports.
pub const OPT_LIST: u32 = 3;
/// Option: TLS (not supported here).
pub const OPT_STARTTLS: u32 = 5;
/// Option: describe an export.
pub const OPT_INFO: u32 = 6;
/// Option: describe an export and enter transmission.
pub const OPT_GO: u32 = 7;
/// Option: structured replies (refused).
pub const OPT_STRUCTURED_REPLY: u32 = 8;

/// Reply: done.
pub const REP_ACK: u32 = 1;
/// Reply: one export (to `NBD_OPT_LIST`).
pub const REP_SERVER: u32 = 2;
/// Reply: one piece of export information.
pub const REP_INFO: u32 = 3;
/// Error replies have this bit set.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
/// Error: option not supported.
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
/// Error: malformed option.
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
/// Error: no such export.
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;

/// Info: size and transmission flags.
pub const INFO_EXPORT: u16 = 0;
/// Info: block size constraints.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flag: flags field is valid.
pub const TFLAG_HAS_FLAGS: u16 = 1;
/// Transmission flag: export is read-only.
pub const TFLAG_READ_ONLY: u16 = 2;
/// Transmission flag: flush supported.
pub const TFLAG_SEND_FLUSH: u16 = 4;
/// Transmission flag: FUA supported.
pub const TFLAG_SEND_FUA: u16 = 8;
/// Transmission flag: trim supported.
pub const TFLAG_SEND_TRIM: u16 = 32;
/// Transmission flag: write zeroes supported.
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 64;

/// Command: read.
pub const CMD_READ: u16 = 0;
/// Command: write.
pub const CMD_WRITE: u16 = 1;
/// Command: disconnect.
pub const CMD_DISC: u16 = 2;
/// Command: flush.
pub const CMD_FLUSH: u16 = 3;
/// Command: trim.
pub const CMD_TRIM: u16 = 4;
/// Command: write zeroes.
pub const CMD_WRITE_ZEROES: u16 = 6;

/// Command flag: forced unit access.
pub const CMD_FLAG_FUA: u16 = 1;
/// Command flag: write zeroes must allocate.
pub const CMD_FLAG_NO_HOLE: u16 = 2;

/// `NBD_EPERM`.
pub const EPERM: u32 = 1;
/// `NBD_EIO`.
pub const EIO: u32 = 5;
/// `NBD_EINVAL`.
pub const EINVAL: u32 = 22;
/// `NBD_ENOSPC`.
pub const ENOSPC: u32 = 28;
/// `NBD_ESHUTDOWN`.
pub const ESHUTDOWN: u32 = 108;
