//! The byte layouts of `hardstate`, `snapshot` and `log` (docs/storage.md,
//! "File formats"), and the scan that reads the log back. Every integer is
//! little-endian; every checksum is CRC-32 (IEEE, as `crc32fast` computes it).
//!
//! Nothing here touches the file system: these functions turn values into
//! bytes and bytes into values, so the recovery rules can be tested byte by byte.

use prost::Message as _;

use crate::raft::{Command, Configuration, Entry, HardState, LogIndex, Snapshot, Term};

/// The format version of `hardstate`, and of the `snapshot` files made
/// before version 2.
pub const FORMAT_VERSION: u32 = 1;
/// The format version of a `snapshot` file. Version 2 follows the data with
/// the configuration as of the last included index (§6, §7): its length
/// (u32) and its bytes (`Configuration::encode`), under the same checksum.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 2;
/// The format version of a log file. Version 2 added durable_before to each
/// record; version 3 gave the record its own payload layout (kind, index,
/// term, command bytes) in place of the peer protocol's prost-encoded
/// `LogEntry` with the key-value store's `Command` inside; version 4 added
/// to the header the index of the entry the file follows, and a checksum.
/// Log segments (`log-<first index>`) are version-4 files; the single file
/// `log` that came before them is rewritten as a segment by
/// `FileStorage::open` (docs/storage.md, "Upgrading").
pub const LOG_FORMAT_VERSION: u32 = 4;

pub const HARD_STATE_MAGIC: &[u8; 4] = b"RKVH";
/// magic, version, current_term, voted_for, crc32
pub const HARD_STATE_LEN: usize = 4 + 4 + 8 + 8 + 4;

pub const SNAPSHOT_MAGIC: &[u8; 4] = b"RKVS";
/// magic, version, last_included_index, last_included_term, data length, crc32
pub const SNAPSHOT_HEADER_LEN: usize = 4 + 4 + 8 + 8 + 8 + 4;

pub const LOG_MAGIC: &[u8; 4] = b"RKVL";
/// magic, version, the last_included_index of the snapshot the log follows,
/// crc32
pub const LOG_HEADER_LEN: u64 = 4 + 4 + 8 + 4;
/// magic, version: all a log header held in versions 1 to 3
const LEGACY_LOG_HEADER_LEN: u64 = 8;
/// payload length, crc32 of durable_before and the payload, durable_before
pub const RECORD_HEADER_LEN: usize = 16;
/// payload length, crc32 of the payload
const VERSION_1_RECORD_HEADER_LEN: usize = 8;
/// Far above the largest command a state machine is expected to propose (the
/// key-value store admits a 4 KiB key and a 1 MiB value), so a length beyond
/// it can only be damage.
pub const MAX_RECORD_PAYLOAD: usize = 16 << 20;

/// The first byte of a version-3 payload: what the entry carries.
const KIND_COMMAND: u8 = 1;
const KIND_NOOP: u8 = 2;
/// A configuration (§6), as `Configuration::encode` writes it.
const KIND_CONFIG: u8 = 3;
/// kind, index, term
const PAYLOAD_HEADER_LEN: usize = 1 + 8 + 8;

/// Versions 1 and 2: prost writes `LogEntry.index` (field 1, varint) first,
/// and it is never 0, so every payload starts with this byte.
const LEGACY_INDEX_FIELD_TAG: u8 = 0x08;
/// Versions 1 and 2: the key-value store's encoding of the §8 no-op
/// (`raftkv.Command`, field 3, an empty message).
const LEGACY_NOOP: [u8; 2] = [0x1a, 0x00];

/// A version-1 or -2 record's payload: the peer protocol's `LogEntry`
/// (proto/raft.proto as it was), declared here so that the storage reads
/// old logs without depending on the protocol.
#[derive(Clone, PartialEq, prost::Message)]
struct LegacyEntry {
    #[prost(uint64, tag = "1")]
    index: u64,
    #[prost(uint64, tag = "2")]
    term: u64,
    #[prost(bytes = "vec", tag = "3")]
    command: Vec<u8>,
}

/// Damage found in a file: where, and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    pub offset: u64,
    pub reason: String,
}

fn corruption(offset: u64, reason: impl Into<String>) -> Corruption {
    Corruption {
        offset,
        reason: reason.into(),
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Check the 8 bytes every file starts with.
fn check_magic_and_version(bytes: &[u8], magic: &[u8; 4], what: &str) -> Result<(), Corruption> {
    check_magic(bytes, magic, what)?;
    let version = u32_at(bytes, 4);
    if version != FORMAT_VERSION {
        return Err(corruption(
            4,
            format!("format version {version}, but this build reads version {FORMAT_VERSION}"),
        ));
    }
    Ok(())
}

fn check_magic(bytes: &[u8], magic: &[u8; 4], what: &str) -> Result<(), Corruption> {
    if &bytes[0..4] != magic {
        return Err(corruption(
            0,
            format!(
                "not a raft-kv {what} file (magic {:02x?}, expected {:02x?})",
                &bytes[0..4],
                magic
            ),
        ));
    }
    Ok(())
}

fn check_crc(stored: u32, computed: u32, at: usize, covered: &str) -> Result<(), Corruption> {
    if stored == computed {
        return Ok(());
    }
    Err(corruption(
        at as u64,
        format!("crc32 mismatch over {covered} (stored {stored:#010x}, computed {computed:#010x})"),
    ))
}

pub fn encode_hard_state(hard_state: HardState) -> [u8; HARD_STATE_LEN] {
    let mut bytes = [0; HARD_STATE_LEN];
    bytes[0..4].copy_from_slice(HARD_STATE_MAGIC);
    bytes[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes[8..16].copy_from_slice(&hard_state.current_term.to_le_bytes());
    bytes[16..24].copy_from_slice(&hard_state.voted_for.unwrap_or(0).to_le_bytes());
    let crc = crc32fast::hash(&bytes[0..24]);
    bytes[24..28].copy_from_slice(&crc.to_le_bytes());
    bytes
}

pub fn decode_hard_state(bytes: &[u8]) -> Result<HardState, Corruption> {
    if bytes.len() != HARD_STATE_LEN {
        return Err(corruption(
            0,
            format!(
                "file is {} bytes, a hard state is {HARD_STATE_LEN}",
                bytes.len()
            ),
        ));
    }
    check_magic_and_version(bytes, HARD_STATE_MAGIC, "hardstate")?;
    check_crc(
        u32_at(bytes, 24),
        crc32fast::hash(&bytes[0..24]),
        24,
        "bytes 0..24",
    )?;
    let voted_for = u64_at(bytes, 16);
    Ok(HardState {
        current_term: u64_at(bytes, 8),
        voted_for: (voted_for != 0).then_some(voted_for),
    })
}

/// The snapshot header. Its checksum covers the header fields as well as the
/// data, so a flipped bit in last_included_index cannot pass unnoticed.
/// It is written first, then the data, then [`encode_snapshot_trailer`].
pub fn encode_snapshot_header(snapshot: &Snapshot) -> [u8; SNAPSHOT_HEADER_LEN] {
    let mut header = [0; SNAPSHOT_HEADER_LEN];
    header[0..4].copy_from_slice(SNAPSHOT_MAGIC);
    header[4..8].copy_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    header[8..16].copy_from_slice(&snapshot.last_included_index.to_le_bytes());
    header[16..24].copy_from_slice(&snapshot.last_included_term.to_le_bytes());
    header[24..32].copy_from_slice(&(snapshot.data.len() as u64).to_le_bytes());
    let trailer = encode_snapshot_trailer(snapshot);
    let crc = snapshot_crc(&header[0..32], &snapshot.data, &trailer);
    header[32..36].copy_from_slice(&crc.to_le_bytes());
    header
}

/// What follows a snapshot's data: the configuration's length and bytes
/// (length 0: none, a snapshot of a cluster that never changed).
pub fn encode_snapshot_trailer(snapshot: &Snapshot) -> Vec<u8> {
    let configuration = snapshot
        .configuration
        .as_ref()
        .map(Configuration::encode)
        .unwrap_or_default();
    let mut trailer = (configuration.len() as u32).to_le_bytes().to_vec();
    trailer.extend_from_slice(&configuration);
    trailer
}

fn snapshot_crc(header_fields: &[u8], data: &[u8], trailer: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header_fields);
    hasher.update(data);
    hasher.update(trailer);
    hasher.finalize()
}

/// Decode a whole `snapshot` file (version 1 or 2); the data is moved out
/// of `bytes`, not copied.
pub fn decode_snapshot(mut bytes: Vec<u8>) -> Result<Snapshot, Corruption> {
    if bytes.len() < SNAPSHOT_HEADER_LEN {
        return Err(corruption(
            0,
            format!(
                "file is {} bytes, shorter than the {SNAPSHOT_HEADER_LEN}-byte header",
                bytes.len()
            ),
        ));
    }
    check_magic(&bytes, SNAPSHOT_MAGIC, "snapshot")?;
    let version = u32_at(&bytes, 4);
    if version != FORMAT_VERSION && version != SNAPSHOT_FORMAT_VERSION {
        return Err(corruption(
            4,
            format!("format version {version}, but this build reads versions 1 and {SNAPSHOT_FORMAT_VERSION}"),
        ));
    }
    let data_len = u64_at(&bytes, 24);
    let held = (bytes.len() - SNAPSHOT_HEADER_LEN) as u64;
    let trailer_at = SNAPSHOT_HEADER_LEN as u64 + data_len;
    let (data_end, trailer_len) = if version == FORMAT_VERSION {
        if data_len != held {
            return Err(corruption(
                24,
                format!("header says {data_len} data bytes, the file holds {held}"),
            ));
        }
        (bytes.len(), 0)
    } else {
        let config_len = (data_len.checked_add(4).is_some_and(|n| n <= held))
            .then(|| u32_at(&bytes, trailer_at as usize) as u64);
        match config_len {
            Some(config_len) if data_len + 4 + config_len == held => {
                (trailer_at as usize, 4 + config_len as usize)
            }
            _ => {
                return Err(corruption(
                    24,
                    format!("header says {data_len} data bytes, which with the configuration after them do not fill the {held} bytes the file holds"),
                ))
            }
        }
    };
    let trailer = &bytes[data_end..];
    check_crc(
        u32_at(&bytes, 32),
        snapshot_crc(
            &bytes[0..32],
            &bytes[SNAPSHOT_HEADER_LEN..data_end],
            trailer,
        ),
        32,
        "the header and data",
    )?;
    let configuration = match trailer_len {
        0 | 4 => None,
        _ => Some(Configuration::decode(&trailer[4..]).map_err(|why| {
            corruption(
                trailer_at + 4,
                format!("the configuration is not one: {why}"),
            )
        })?),
    };
    let last_included_index = u64_at(&bytes, 8);
    if !leaves_room_after(last_included_index) {
        return Err(corruption(
            8,
            format!("last_included_index {last_included_index} {NO_ROOM}"),
        ));
    }
    let last_included_term = u64_at(&bytes, 16);
    bytes.truncate(data_end);
    bytes.drain(..SNAPSHOT_HEADER_LEN);
    Ok(Snapshot {
        last_included_index,
        last_included_term,
        data: bytes,
        configuration,
    })
}

/// Whether an entry could follow `index`. One that cannot (u64::MAX) is
/// crafted, or damage a checksum happened to match; it is refused where it
/// is read, so that no `index + 1` overflows.
pub fn leaves_room_after(index: LogIndex) -> bool {
    index < LogIndex::MAX
}

pub const NO_ROOM: &str = "leaves no index for the next entry";

/// The header of a log segment whose first entry follows entry `follows`
/// (0: the log starts at entry 1). Its checksum covers the index, so a
/// flipped bit cannot make it claim less than it follows (recovery checks
/// that the snapshot reaches the oldest segment's `follows`).
pub fn log_header(follows: LogIndex) -> [u8; LOG_HEADER_LEN as usize] {
    let mut header = [0; LOG_HEADER_LEN as usize];
    header[0..4].copy_from_slice(LOG_MAGIC);
    header[4..8].copy_from_slice(&LOG_FORMAT_VERSION.to_le_bytes());
    header[8..16].copy_from_slice(&follows.to_le_bytes());
    let crc = crc32fast::hash(&header[0..16]);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The snapshot a version-4 header says the log follows.
fn decode_log_header(bytes: &[u8]) -> Result<LogIndex, Corruption> {
    if (bytes.len() as u64) < LOG_HEADER_LEN {
        return Err(corruption(
            0,
            format!(
                "file is {} bytes, shorter than the {LOG_HEADER_LEN}-byte header of format version {LOG_FORMAT_VERSION}",
                bytes.len()
            ),
        ));
    }
    check_crc(
        u32_at(bytes, 16),
        crc32fast::hash(&bytes[0..16]),
        16,
        "bytes 0..16",
    )?;
    let follows = u64_at(bytes, 8);
    if !leaves_room_after(follows) {
        return Err(corruption(
            8,
            format!("the header says the log follows entry {follows}, which {NO_ROOM}"),
        ));
    }
    Ok(follows)
}

/// A version-4 header whose version was damaged into an older one would
/// have its last 12 bytes read as a record, and the records after them
/// judged by the damage to it: perhaps cut off whole as a torn write. The
/// header's own checksum, computed as if the version were 4, gives it away.
fn check_not_a_damaged_header(bytes: &[u8], version: u32) -> Result<(), Corruption> {
    if (bytes.len() as u64) < LOG_HEADER_LEN {
        return Ok(());
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[0..4]);
    hasher.update(&LOG_FORMAT_VERSION.to_le_bytes());
    hasher.update(&bytes[8..16]);
    if hasher.finalize() != u32_at(bytes, 16) {
        return Ok(());
    }
    Err(corruption(
        4,
        format!(
            "format version {version}, yet bytes 8..20 are the snapshot index and crc32 of a version-{LOG_FORMAT_VERSION} header: the version was damaged"
        ),
    ))
}

/// Append one log record for `entry` to `buffer`; returns the record's length.
/// `durable_before` is the last entry that was on disk when the record was
/// written (docs/storage.md, "Torn writes and corruption").
/// On error (an entry too large to be read back) `buffer` is unchanged.
pub fn encode_record(
    entry: &Entry,
    durable_before: LogIndex,
    buffer: &mut Vec<u8>,
) -> Result<usize, String> {
    let start = buffer.len();
    buffer.extend_from_slice(&[0; RECORD_HEADER_LEN]);
    let config;
    let (kind, command): (u8, &[u8]) = match &entry.command {
        Command::Client(bytes) => (KIND_COMMAND, bytes),
        Command::Noop => (KIND_NOOP, &[]),
        Command::Config(configuration) => {
            config = configuration.encode();
            (KIND_CONFIG, &config)
        }
    };
    buffer.push(kind);
    buffer.extend_from_slice(&entry.index.to_le_bytes());
    buffer.extend_from_slice(&entry.term.to_le_bytes());
    buffer.extend_from_slice(command);
    let payload_len = buffer.len() - start - RECORD_HEADER_LEN;
    if payload_len > MAX_RECORD_PAYLOAD {
        buffer.truncate(start);
        return Err(format!(
            "entry {} encodes to {payload_len} bytes, more than the {MAX_RECORD_PAYLOAD} a log record may hold",
            entry.index
        ));
    }
    buffer[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    buffer[start + 8..start + 16].copy_from_slice(&durable_before.to_le_bytes());
    let crc = crc32fast::hash(&buffer[start + 8..]);
    buffer[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(buffer.len() - start)
}

/// What a scan of the `log` file found.
#[derive(Debug, Default)]
pub struct ScannedLog {
    /// the format version in the header (below `LOG_FORMAT_VERSION`: to upgrade)
    pub version: u32,
    /// the index of the entry the header says the file's first record
    /// follows (in the single-file log of version 4, the snapshot's last
    /// index); 0 in versions 1 to 3, which did not record it
    pub follows: LogIndex,
    /// the entries of the complete records, in file order
    pub entries: Vec<Entry>,
    /// where each of those records starts
    pub offsets: Vec<u64>,
    /// the end of the last complete record
    pub end: u64,
    /// a torn last record: where it starts and what is wrong with it
    pub torn: Option<Corruption>,
}

/// How a log's records are laid out, by the format version in its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// payload length, crc32 of the payload, payload (a prost `LogEntry`)
    Version1,
    /// payload length, crc32 of durable_before and the payload, durable_before,
    /// payload (a prost `LogEntry`)
    Version2,
    /// as version 2, the payload being kind, index, term, command bytes
    /// (versions 3 and 4, whose headers differ)
    Version3,
}

impl Layout {
    fn header_len(self) -> usize {
        match self {
            Layout::Version1 => VERSION_1_RECORD_HEADER_LEN,
            Layout::Version2 | Layout::Version3 => RECORD_HEADER_LEN,
        }
    }

    /// Whether a payload may start with `byte` (rejects most offsets cheaply).
    fn may_start_payload(self, byte: u8) -> bool {
        match self {
            Layout::Version1 | Layout::Version2 => byte == LEGACY_INDEX_FIELD_TAG,
            Layout::Version3 => byte == KIND_COMMAND || byte == KIND_NOOP,
        }
    }

    /// The format versions that lay records out so.
    fn versions(self) -> &'static str {
        match self {
            Layout::Version1 => "1",
            Layout::Version2 => "2",
            Layout::Version3 => "3 or 4",
        }
    }

    /// The layout a damaged version number most likely hides: the one with
    /// the other record header.
    fn other(self) -> Layout {
        match self {
            Layout::Version1 => Layout::Version3,
            Layout::Version2 | Layout::Version3 => Layout::Version1,
        }
    }
}

enum RecordAt<'a> {
    Complete {
        payload: &'a [u8],
        /// None in a version-1 log, which did not record it
        durable_before: Option<LogIndex>,
        next: usize,
    },
    Damaged(String),
}

fn record_at(bytes: &[u8], at: usize, layout: Layout) -> RecordAt<'_> {
    let header_len = layout.header_len();
    let rest = &bytes[at..];
    if rest.len() < header_len {
        return RecordAt::Damaged(format!(
            "record header cut short ({} of {header_len} bytes)",
            rest.len()
        ));
    }
    let len = u32_at(rest, 0) as usize;
    if len == 0 || len > MAX_RECORD_PAYLOAD {
        return RecordAt::Damaged(format!(
            "record length {len} is outside 1..={MAX_RECORD_PAYLOAD}"
        ));
    }
    let available = rest.len() - header_len;
    if len > available {
        return RecordAt::Damaged(format!(
            "record of {len} bytes runs past the end of the file ({available} bytes left)"
        ));
    }
    let payload = &rest[header_len..header_len + len];
    let (checksummed, durable_before) = match layout {
        Layout::Version1 => (payload, None),
        Layout::Version2 | Layout::Version3 => (&rest[8..header_len + len], Some(u64_at(rest, 8))),
    };
    let stored = u32_at(rest, 4);
    let computed = crc32fast::hash(checksummed);
    if stored != computed {
        return RecordAt::Damaged(format!(
            "crc32 mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    RecordAt::Complete {
        payload,
        durable_before,
        next: at + header_len + len,
    }
}

/// A complete record with a good checksum and a decodable payload.
struct ValidRecord {
    offset: usize,
    durable_before: Option<LogIndex>,
    next: usize,
}

/// The first valid record at or after `from`, if there is one.
fn next_valid_record(bytes: &[u8], from: usize, layout: Layout) -> Option<ValidRecord> {
    let header_len = layout.header_len();
    (from..bytes.len().saturating_sub(header_len)).find_map(|at| {
        // The tag test rejects almost every offset before the crc is computed.
        if !layout.may_start_payload(bytes[at + header_len]) {
            return None;
        }
        match record_at(bytes, at, layout) {
            RecordAt::Complete {
                payload,
                durable_before,
                next,
            } if decode_payload(payload, layout).is_ok() => Some(ValidRecord {
                offset: at,
                durable_before,
                next,
            }),
            _ => None,
        }
    })
}

/// Damage at byte offset `at`, in the record that held entry `damaged_index`:
/// a torn write (returned, for the caller to cut off) or corruption (the
/// error). Each valid record after it says which entries were on disk when
/// it was written. If none says entry `damaged_index` was, then nothing from
/// `at` on had been fsynced, so nothing there was acknowledged (Figure 2),
/// whatever the crash left of it: a record cut short, zeros, garbage, or a
/// hole with later records of the same unsynced writes after it.
fn judge_damage(
    bytes: &[u8],
    at: usize,
    (version, layout): (u32, Layout),
    damaged_index: LogIndex,
    reason: String,
) -> Result<Corruption, Corruption> {
    let mut first_valid = None;
    let mut from = at + 1;
    while let Some(valid) = next_valid_record(bytes, from, layout) {
        match valid.durable_before {
            // Version 1 did not record what was on disk, so any valid record
            // after the damage is taken for proof, as version 1 did.
            None => {
                return Err(corruption(
                    at as u64,
                    format!(
                        "{reason}, yet a valid record follows at byte offset {}",
                        valid.offset
                    ),
                ))
            }
            Some(durable) if durable >= damaged_index => {
                return Err(corruption(
                    at as u64,
                    format!(
                        "{reason}, yet a valid record follows at byte offset {}, written when entries through {durable} were durable",
                        valid.offset
                    ),
                ))
            }
            Some(_) => {}
        }
        first_valid.get_or_insert(valid.offset);
        from = valid.next;
    }
    // A version number damaged into the other one makes every record look
    // damaged, and the whole log would be cut off as torn.
    if let Some(valid) = next_valid_record(bytes, at, layout.other()) {
        return Err(corruption(
            at as u64,
            format!(
                "{reason}, yet a valid record of format version {} is at byte offset {} (the header says version {version})",
                layout.other().versions(),
                valid.offset,
            ),
        ));
    }
    Ok(corruption(
        at as u64,
        match first_valid {
            None => reason,
            Some(offset) => format!(
                "{reason}; the valid records from byte offset {offset} on were all written before entry {damaged_index} was durable"
            ),
        },
    ))
}

/// Read a whole `log` file; `snapshot_index` is where the snapshot beside it
/// ends (0 without one). A damaged record is a write the crash interrupted
/// (the caller cuts it off) or corruption (an error), as `judge_damage`
/// decides; a record that passes its checksum but breaks the log's rules is
/// corruption.
pub fn scan_log(bytes: &[u8], snapshot_index: LogIndex) -> Result<ScannedLog, Corruption> {
    if (bytes.len() as u64) < LEGACY_LOG_HEADER_LEN {
        return Err(corruption(
            0,
            format!(
                "file is {} bytes, too short for the magic and format version ({LEGACY_LOG_HEADER_LEN} bytes)",
                bytes.len()
            ),
        ));
    }
    check_magic(bytes, LOG_MAGIC, "log")?;
    let version = u32_at(bytes, 4);
    let layout = match version {
        1 => Layout::Version1,
        2 => Layout::Version2,
        3 | LOG_FORMAT_VERSION => Layout::Version3,
        _ => {
            return Err(corruption(
                4,
                format!(
                "format version {version}, but this build reads versions 1 to {LOG_FORMAT_VERSION}"
            ),
            ))
        }
    };
    let (follows, header_len) = if version == LOG_FORMAT_VERSION {
        (decode_log_header(bytes)?, LOG_HEADER_LEN)
    } else {
        check_not_a_damaged_header(bytes, version)?;
        (0, LEGACY_LOG_HEADER_LEN)
    };
    let mut scanned = ScannedLog {
        version,
        follows,
        ..Default::default()
    };
    let mut at = header_len as usize;
    while at < bytes.len() {
        if bytes[at..].iter().all(|&b| b == 0) {
            // Space the log file was grown by ahead of its records (see
            // `FileStorage::append`), or a torn write of which nothing
            // reached the disk: the clean end of the log either way.
            break;
        }
        let (payload, next) = match record_at(bytes, at, layout) {
            RecordAt::Complete { payload, next, .. } => (payload, next),
            RecordAt::Damaged(reason) => {
                // The entry after the last good one; in the first record,
                // the one after the entry the header names, or (versions 1
                // to 3, whose header names none) after the snapshot.
                let before_first = match version {
                    LOG_FORMAT_VERSION => follows,
                    _ => snapshot_index,
                };
                let damaged_index = scanned
                    .entries
                    .last()
                    .map_or(before_first, |e| e.index)
                    .saturating_add(1);
                scanned.torn = Some(judge_damage(
                    bytes,
                    at,
                    (version, layout),
                    damaged_index,
                    reason,
                )?);
                break;
            }
        };
        let entry = decode_entry(payload, layout, at, scanned.entries.last())?;
        scanned.offsets.push(at as u64);
        scanned.entries.push(entry);
        at = next;
    }
    scanned.end = at as u64;
    Ok(scanned)
}

fn decode_entry(
    payload: &[u8],
    layout: Layout,
    at: usize,
    previous: Option<&Entry>,
) -> Result<Entry, Corruption> {
    let at64 = at as u64;
    let entry = decode_payload(payload, layout).map_err(|reason| corruption(at64, reason))?;
    if entry.index == 0 {
        return Err(corruption(at64, "entry index 0 (log indexes start at 1)"));
    }
    if !leaves_room_after(entry.index) {
        return Err(corruption(
            at64,
            format!("entry index {} {NO_ROOM}", entry.index),
        ));
    }
    if let Some(previous) = previous {
        check_follows(entry.index, entry.term, previous.index, previous.term)
            .map_err(|reason| corruption(at64, reason))?;
    }
    Ok(entry)
}

/// The entry a record's payload holds, in the layout of its version.
fn decode_payload(payload: &[u8], layout: Layout) -> Result<Entry, String> {
    if layout != Layout::Version3 {
        let legacy = LegacyEntry::decode(payload)
            .map_err(|e| format!("record payload is not a LogEntry: {e}"))?;
        let command = if legacy.command == LEGACY_NOOP {
            Command::Noop
        } else {
            // The key-value store's encoding, which it still reads.
            Command::Client(legacy.command)
        };
        return Ok(Entry {
            index: legacy.index,
            term: legacy.term,
            command,
        });
    }
    if payload.len() < PAYLOAD_HEADER_LEN {
        return Err(format!(
            "record payload of {} bytes is shorter than its {PAYLOAD_HEADER_LEN}-byte header",
            payload.len()
        ));
    }
    let index = u64_at(payload, 1);
    let term = u64_at(payload, 9);
    let command = &payload[PAYLOAD_HEADER_LEN..];
    let command = match payload[0] {
        KIND_COMMAND => Command::Client(command.to_vec()),
        KIND_NOOP if command.is_empty() => Command::Noop,
        KIND_NOOP => {
            return Err(format!(
                "no-op entry {index} carries {} bytes",
                command.len()
            ))
        }
        KIND_CONFIG => Command::Config(
            Configuration::decode(command)
                .map_err(|why| format!("configuration entry {index} is not one: {why}"))?,
        ),
        kind => return Err(format!("entry {index} has unknown kind {kind}")),
    };
    Ok(Entry {
        index,
        term,
        command,
    })
}

/// The two rules every stored entry obeys relative to the one before it:
/// indexes are consecutive, and terms never decrease (a leader appends entries
/// of its own term after those it inherited, §5.3).
pub fn check_follows(
    index: LogIndex,
    term: Term,
    previous_index: LogIndex,
    previous_term: Term,
) -> Result<(), String> {
    if previous_index.checked_add(1) != Some(index) {
        return Err(format!(
            "entry {index} follows entry {previous_index} (indexes must be consecutive)"
        ));
    }
    if term < previous_term {
        return Err(format!(
            "entry {index} has term {term}, lower than the previous entry's term {previous_term}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: LogIndex, term: Term) -> Entry {
        let command = format!("set key{index} {}", "v".repeat(index as usize));
        Entry {
            index,
            term,
            command: Command::Client(command.into_bytes()),
        }
    }

    /// A record's payload as versions 1 and 2 wrote it.
    fn legacy_payload(entry: &Entry) -> Vec<u8> {
        let command = match &entry.command {
            Command::Client(bytes) => bytes.clone(),
            Command::Noop => LEGACY_NOOP.to_vec(),
            Command::Config(_) => unreachable!("versions 1 and 2 had no configurations"),
        };
        LegacyEntry {
            index: entry.index,
            term: entry.term,
            command,
        }
        .encode_to_vec()
    }

    /// A log file holding `entries`, each appended and synced on its own,
    /// and where each record starts.
    fn log_bytes(entries: &[Entry]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = log_header(0).to_vec();
        let mut offsets = Vec::new();
        for e in entries {
            offsets.push(bytes.len());
            encode_record(e, e.index - 1, &mut bytes).unwrap();
        }
        (bytes, offsets)
    }

    #[test]
    fn hard_state_round_trips_and_none_is_zero() {
        for hard_state in [
            HardState::default(),
            HardState {
                current_term: 9,
                voted_for: Some(3),
            },
        ] {
            let bytes = encode_hard_state(hard_state);
            assert_eq!(
                &bytes[16..24],
                &hard_state.voted_for.unwrap_or(0).to_le_bytes()
            );
            assert_eq!(decode_hard_state(&bytes), Ok(hard_state));
        }
    }

    #[test]
    fn snapshot_round_trips_and_its_header_is_checksummed() {
        let snapshot = Snapshot {
            last_included_index: 12,
            last_included_term: 4,
            data: b"state machine".to_vec(),
            configuration: None,
        };
        let mut bytes = snapshot_file(&snapshot);
        assert_eq!(decode_snapshot(bytes.clone()), Ok(snapshot));
        bytes[8] ^= 1; // last_included_index 12 -> 13
        let error = decode_snapshot(bytes).unwrap_err();
        assert_eq!(error.offset, 32, "{error:?}");
        assert!(error.reason.contains("crc32 mismatch"), "{error:?}");
    }

    fn snapshot_file(snapshot: &Snapshot) -> Vec<u8> {
        let mut bytes = encode_snapshot_header(snapshot).to_vec();
        bytes.extend_from_slice(&snapshot.data);
        bytes.extend_from_slice(&encode_snapshot_trailer(snapshot));
        bytes
    }

    #[test]
    fn a_snapshot_carries_its_configuration_and_version_1_files_still_read() {
        let mut configuration = Configuration::new([1, 2, 4]);
        configuration.outgoing = [1, 2, 3].into();
        configuration.addresses.insert(4, "10.0.0.4:7004".into());
        let snapshot = Snapshot {
            last_included_index: 12,
            last_included_term: 4,
            data: b"state".to_vec(),
            configuration: Some(configuration),
        };
        let bytes = snapshot_file(&snapshot);
        assert_eq!(decode_snapshot(bytes.clone()), Ok(snapshot.clone()));
        // A flipped bit in the configuration fails the checksum.
        let mut damaged = bytes.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(decode_snapshot(damaged)
            .unwrap_err()
            .reason
            .contains("crc32"));
        // A configuration length past the end is refused before any read.
        let mut long = bytes;
        let at = SNAPSHOT_HEADER_LEN + snapshot.data.len();
        long[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_snapshot(long).unwrap_err().offset, 24);
        // Version 1: header, data, and a checksum over those alone.
        let mut v1 = encode_snapshot_header(&snapshot).to_vec();
        v1[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let crc = snapshot_crc(&v1[0..32], &snapshot.data, &[]);
        v1[32..36].copy_from_slice(&crc.to_le_bytes());
        v1.extend_from_slice(&snapshot.data);
        let old = decode_snapshot(v1).unwrap();
        assert_eq!((old.data, old.configuration), (snapshot.data, None));
    }

    #[test]
    fn scan_reads_back_what_was_encoded() {
        let entries: Vec<Entry> = (1..=5).map(|i| entry(i, 1 + i / 3)).collect();
        let (bytes, offsets) = log_bytes(&entries);
        let scanned = scan_log(&bytes, 0).unwrap();
        assert_eq!(scanned.entries, entries);
        assert_eq!(
            scanned.offsets,
            offsets.iter().map(|&o| o as u64).collect::<Vec<_>>()
        );
        assert_eq!(scanned.end, bytes.len() as u64);
        assert_eq!(scanned.torn, None);
    }

    #[test]
    fn a_damaged_last_record_is_torn_and_an_earlier_one_is_corrupt() {
        let entries: Vec<Entry> = (1..=3).map(|i| entry(i, 1)).collect();
        let (bytes, offsets) = log_bytes(&entries);

        let mut last_damaged = bytes.clone();
        *last_damaged.last_mut().unwrap() ^= 0x10;
        let scanned = scan_log(&last_damaged, 0).unwrap();
        assert_eq!(scanned.entries, entries[..2]);
        assert_eq!(scanned.end, offsets[2] as u64);
        assert_eq!(scanned.torn.unwrap().offset, offsets[2] as u64);

        let mut middle_damaged = bytes.clone();
        middle_damaged[offsets[1] + RECORD_HEADER_LEN + 2] ^= 0x10;
        let error = scan_log(&middle_damaged, 0).unwrap_err();
        assert_eq!(error.offset, offsets[1] as u64);
        assert!(
            error.reason.contains(&format!(
                "valid record follows at byte offset {}",
                offsets[2]
            )),
            "{error:?}"
        );
    }

    #[test]
    fn zeros_after_the_last_record_are_the_clean_end() {
        // The file is grown ahead of its records, and a crash can leave it
        // longer than what reached the disk: either way the rest reads as
        // zeros, and nothing was lost.
        let entries: Vec<Entry> = (1..=2).map(|i| entry(i, 1)).collect();
        let (mut bytes, _) = log_bytes(&entries);
        let end = bytes.len();
        bytes.extend_from_slice(&[0; 100]);
        let scanned = scan_log(&bytes, 0).unwrap();
        assert_eq!(scanned.entries, entries);
        assert_eq!(scanned.end, end as u64);
        assert_eq!(scanned.torn, None);
    }

    #[test]
    fn a_partly_written_record_before_zeros_is_torn() {
        let entries: Vec<Entry> = (1..=2).map(|i| entry(i, 1)).collect();
        let (mut bytes, offsets) = log_bytes(&entries);
        // Only the first bytes of the second record reached the disk.
        bytes.truncate(offsets[1] + 3);
        bytes.extend_from_slice(&[0; 100]);
        let scanned = scan_log(&bytes, 0).unwrap();
        assert_eq!(scanned.entries, entries[..1]);
        assert_eq!(scanned.end, offsets[1] as u64);
        assert!(scanned.torn.is_some());
    }

    #[test]
    fn checksummed_records_that_break_the_log_rules_are_refused() {
        let (gap, offsets) = log_bytes(&[entry(1, 1), entry(2, 1), entry(4, 1)]);
        let error = scan_log(&gap, 0).unwrap_err();
        assert_eq!(error.offset, offsets[2] as u64);
        assert!(
            error.reason.contains("entry 4 follows entry 2"),
            "{error:?}"
        );

        let (regression, offsets) = log_bytes(&[entry(1, 2), entry(2, 3), entry(3, 2)]);
        let error = scan_log(&regression, 0).unwrap_err();
        assert_eq!(error.offset, offsets[2] as u64);
        assert!(
            error.reason.contains("lower than the previous"),
            "{error:?}"
        );
    }

    /// Entries 1 and 2 appended and synced one by one, then 3..=5 in one
    /// append; `later` adds entry 6, appended after that append was synced.
    fn batch_log(later: bool) -> (Vec<u8>, Vec<usize>, Vec<Entry>) {
        let entries: Vec<Entry> = (1..=6).map(|i| entry(i, 1)).collect();
        let mut bytes = log_header(0).to_vec();
        let mut offsets = Vec::new();
        let durable_before = [0, 1, 2, 2, 2, 5];
        let count = if later { 6 } else { 5 };
        for (e, durable) in entries.iter().zip(durable_before).take(count) {
            offsets.push(bytes.len());
            encode_record(e, durable, &mut bytes).unwrap();
        }
        (bytes, offsets, entries)
    }

    #[test]
    fn a_hole_is_torn_unless_a_later_record_was_written_after_it_was_durable() {
        let (mut unsynced, offsets, entries) = batch_log(false);
        unsynced[offsets[2]..offsets[3]].fill(0);
        let scanned = scan_log(&unsynced, 0).unwrap();
        assert_eq!(scanned.entries, entries[..2]);
        assert_eq!(scanned.end, offsets[2] as u64);
        let torn = scanned.torn.unwrap();
        assert_eq!(torn.offset, offsets[2] as u64);
        assert!(
            torn.reason.contains(&format!(
                "the valid records from byte offset {} on were all written before entry 3 was durable",
                offsets[3]
            )),
            "{torn:?}"
        );

        let (mut synced, offsets, _) = batch_log(true);
        synced[offsets[2]..offsets[3]].fill(0);
        let error = scan_log(&synced, 0).unwrap_err();
        assert_eq!(error.offset, offsets[2] as u64);
        assert!(
            error.reason.contains(&format!(
                "a valid record follows at byte offset {}, written when entries through 5 were durable",
                offsets[5]
            )),
            "{error:?}"
        );
    }

    #[test]
    fn a_damaged_first_record_holds_the_entry_after_the_one_the_header_names() {
        // Entries 6..=8 appended in one go after a snapshot through 5.
        let mut bytes = log_header(5).to_vec();
        let mut offsets = Vec::new();
        for index in 6..=8 {
            offsets.push(bytes.len());
            encode_record(&entry(index, 1), 5, &mut bytes).unwrap();
        }
        bytes[offsets[0] + RECORD_HEADER_LEN] ^= 1;
        let scanned = scan_log(&bytes, 5).unwrap();
        assert!(scanned.entries.is_empty());
        assert_eq!(scanned.torn.unwrap().offset, LOG_HEADER_LEN);
        // The header, not the snapshot, says which entry the first record
        // holds: after a header naming entry 0, it would be entry 1, which
        // the later records say was durable before them.
        bytes[..LOG_HEADER_LEN as usize].copy_from_slice(&log_header(0));
        assert_eq!(scan_log(&bytes, 5).unwrap_err().offset, LOG_HEADER_LEN);
    }

    #[test]
    fn the_log_header_names_the_snapshot_and_is_checksummed() {
        let (mut bytes, _) = log_bytes(&[]);
        bytes[0..LOG_HEADER_LEN as usize].copy_from_slice(&log_header(7));
        assert_eq!(bytes[8..16], 7u64.to_le_bytes());
        let scanned = scan_log(&bytes, 7).unwrap();
        assert_eq!((scanned.version, scanned.follows), (4, 7));
        assert_eq!(scanned.end, LOG_HEADER_LEN);

        bytes[8] ^= 1; // 7 -> 6
        let error = scan_log(&bytes, 7).unwrap_err();
        assert_eq!(error.offset, 16, "{error:?}");
        assert!(error.reason.contains("crc32 mismatch"), "{error:?}");

        let error = scan_log(&log_header(u64::MAX), 0).unwrap_err();
        assert_eq!(error.offset, 8, "{error:?}");
        assert!(error.reason.contains("leaves no index"), "{error:?}");
        assert_eq!(
            scan_log(&log_header(u64::MAX - 1), 0).unwrap().follows,
            u64::MAX - 1
        );
    }

    #[test]
    fn indexes_no_entry_could_follow_are_refused_not_overflowed() {
        let snapshot = Snapshot {
            last_included_index: u64::MAX,
            last_included_term: 1,
            data: vec![],
            configuration: None,
        };
        let error = decode_snapshot(snapshot_file(&snapshot)).unwrap_err();
        assert_eq!(error.offset, 8, "{error:?}");

        // (entry() would make a command of u64::MAX bytes.)
        let last = Entry {
            index: u64::MAX,
            term: 1,
            command: Command::Noop,
        };
        let mut bytes = log_header(u64::MAX - 1).to_vec();
        encode_record(&last, u64::MAX - 1, &mut bytes).unwrap();
        let error = scan_log(&bytes, u64::MAX - 1).unwrap_err();
        assert_eq!(error.offset, LOG_HEADER_LEN, "{error:?}");
        assert!(error.reason.contains("leaves no index"), "{error:?}");
        assert!(check_follows(0, 1, u64::MAX, 1).is_err());
    }

    /// A log as version 3 wrote it: the records of version 4 after a header
    /// of only the magic and the version.
    fn version_3_log_bytes(entries: &[Entry]) -> Vec<u8> {
        let (bytes, _) = log_bytes(entries);
        [&b"RKVL\x03\0\0\0"[..], &bytes[LOG_HEADER_LEN as usize..]].concat()
    }

    #[test]
    fn a_version_3_log_is_read_and_names_no_snapshot() {
        let entries: Vec<Entry> = (1..=3).map(|i| entry(i, 1)).collect();
        let bytes = version_3_log_bytes(&entries);
        let scanned = scan_log(&bytes, 0).unwrap();
        assert_eq!((scanned.version, scanned.follows), (3, 0));
        assert_eq!(scanned.entries, entries);
        assert_eq!(scanned.offsets[0], 8);
        assert_eq!(scanned.end, bytes.len() as u64);
    }

    #[test]
    fn a_version_4_header_damaged_into_an_older_version_is_refused_not_cut() {
        // Read as an older version, the header's snapshot index and crc32
        // would be a damaged first record, and the records after it no proof
        // against a cut: the whole log could go as a torn write.
        for follows in [0, 5] {
            let mut bytes = log_header(follows).to_vec();
            encode_record(&entry(follows + 1, 1), follows, &mut bytes).unwrap();
            for version in 1..=3u32 {
                let mut damaged = bytes.clone();
                damaged[4..8].copy_from_slice(&version.to_le_bytes());
                let error = scan_log(&damaged, follows).unwrap_err();
                assert_eq!(error.offset, 4, "{error:?}");
                assert!(
                    error.reason.contains(&format!(
                        "format version {version}, yet bytes 8..20 are the snapshot index and crc32 of a version-4 header"
                    )),
                    "{error:?}"
                );
            }
        }
        // The other way round the header's checksum fails.
        let mut version_3 = version_3_log_bytes(&[entry(1, 1)]);
        version_3[4] = 4;
        let error = scan_log(&version_3, 0).unwrap_err();
        assert_eq!(error.offset, 16, "{error:?}");
    }

    #[test]
    fn a_version_damaged_into_the_other_is_refused_not_cut() {
        // Read by the other layout, every record looks damaged and nothing
        // valid of that layout follows: a cut would drop the whole log.
        let entries: Vec<Entry> = (1..=2).map(|i| entry(i, 1)).collect();
        let mut version_3 = version_3_log_bytes(&entries[..1]);
        version_3[4] = 1;
        let error = scan_log(&version_3, 0).unwrap_err();
        assert_eq!(error.offset, 8);
        assert!(
            error.reason.contains(
                "a valid record of format version 3 or 4 is at byte offset 8 (the header says version 1)"
            ),
            "{error:?}"
        );

        let mut version_1 = version_1_log_bytes(&entries[..1]);
        version_1[4] = 3;
        let error = scan_log(&version_1, 0).unwrap_err();
        assert!(
            error
                .reason
                .contains("a valid record of format version 1 is at byte offset 8"),
            "{error:?}"
        );
    }

    #[test]
    fn durable_before_is_stored_and_checksummed() {
        let mut bytes = Vec::new();
        encode_record(&entry(9, 2), 7, &mut bytes).unwrap();
        assert_eq!(bytes[8..16], 7u64.to_le_bytes());
        assert!(matches!(
            record_at(&bytes, 0, Layout::Version3),
            RecordAt::Complete {
                durable_before: Some(7),
                ..
            }
        ));
        bytes[8] ^= 1;
        assert!(matches!(
            record_at(&bytes, 0, Layout::Version3),
            RecordAt::Damaged(reason) if reason.contains("crc32 mismatch")
        ));
    }

    /// A log as version 1 wrote it: 8-byte record headers, no durable_before.
    fn version_1_log_bytes(entries: &[Entry]) -> Vec<u8> {
        let mut bytes = b"RKVL\x01\0\0\0".to_vec();
        for e in entries {
            let payload = legacy_payload(e);
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            bytes.extend_from_slice(&payload);
        }
        bytes
    }

    /// A log as version 2 wrote it: the version-3 record header, a prost
    /// `LogEntry` for a payload.
    fn version_2_log_bytes(entries: &[Entry]) -> Vec<u8> {
        let mut bytes = b"RKVL\x02\0\0\0".to_vec();
        for e in entries {
            let payload = legacy_payload(e);
            let mut checksummed = (e.index - 1).to_le_bytes().to_vec();
            checksummed.extend_from_slice(&payload);
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(&checksummed).to_le_bytes());
            bytes.extend_from_slice(&checksummed);
        }
        bytes
    }

    #[test]
    fn a_version_2_log_is_read_with_its_no_ops() {
        let mut entries: Vec<Entry> = (1..=3).map(|i| entry(i, 1)).collect();
        entries[0].command = Command::Noop;
        let bytes = version_2_log_bytes(&entries);
        let scanned = scan_log(&bytes, 0).unwrap();
        assert_eq!(scanned.version, 2);
        assert_eq!(scanned.entries, entries);
        assert_eq!(scanned.end, bytes.len() as u64);
    }

    #[test]
    fn a_version_1_log_is_read_by_its_own_layout() {
        let entries: Vec<Entry> = (1..=3).map(|i| entry(i, 1)).collect();
        let bytes = version_1_log_bytes(&entries);
        let scanned = scan_log(&bytes, 0).unwrap();
        assert_eq!(scanned.version, 1);
        assert_eq!(scanned.entries, entries);
        assert_eq!(scanned.end, bytes.len() as u64);

        let mut future = bytes.clone();
        future[4] = 5;
        let error = scan_log(&future, 0).unwrap_err();
        assert_eq!(error.offset, 4);
        assert!(error.reason.contains("format version 5"), "{error:?}");
    }

    #[test]
    fn an_oversized_entry_is_not_encoded() {
        let huge = Entry {
            index: 1,
            term: 1,
            command: Command::Client(vec![b'x'; MAX_RECORD_PAYLOAD]),
        };
        let mut buffer = vec![1, 2, 3];
        assert!(encode_record(&huge, 0, &mut buffer).is_err());
        assert_eq!(buffer, [1, 2, 3]);
    }
}
