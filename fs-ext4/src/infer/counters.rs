//! What inference counts: work done and every kind of anomaly.

use gammaray_core::infer::Counter;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Counters of one [`super::Ext4Inference`].
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct Counters {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            /// Every counter with its name.
            pub fn list(&self) -> Vec<Counter> {
                vec![$(Counter { name: stringify!($name), value: self.$name },)*]
            }
        }
    };
}

counters! {
    /// Requests seen.
    writes,
    /// Requests that could not be inspected (past the end, too large,
    /// data length not matching).
    bad_writes,
    /// Discards seen.
    discards,
    /// File-data blocks written.
    data_blocks,
    /// Blocks written that nobody owned (held).
    unknown_blocks,
    /// Bitmap and other blocks written that need no inference.
    other_blocks,
    /// Journal blocks written.
    journal_blocks,
    /// Transactions applied from the journal.
    journal_txns,
    /// Commit blocks whose transaction could not be walked.
    journal_txns_broken,
    /// Commit blocks for transactions already applied (or older).
    journal_stale_commits,
    /// Revoke records applied.
    journal_revokes,
    /// Logged blocks whose checksum did not match.
    journal_bad_checksums,
    /// Committed but un-checkpointed transactions found in the journal at
    /// the start (the crawl saw them replayed; their copies seed the
    /// journal overlay).
    journal_replayed_txns,
    /// Home blocks whose newest committed copy the crawl replayed, found
    /// at the start (those whose home block already equals the copy are
    /// not kept in the overlay).
    journal_replayed_blocks,
    /// Metadata blocks written home that equalled their journal copy.
    checkpoint_blocks,
    /// Metadata blocks written home with new contents (no journal, or a
    /// journal replayed after a crash).
    home_meta_blocks,
    /// Inodes re-read after a transaction.
    inodes_rescanned,
    /// Data held for unknown blocks right now (bytes).
    unknown_held_bytes,
    /// Lost markers emitted.
    lost_events,
    /// Data blocks not inspected because the data-drop policy was on.
    data_dropped_blocks,
    /// File-system resizes, after which the model is rebuilt.
    resyncs,
    /// Corrupt structures met (each also logged).
    anomalies,
}
