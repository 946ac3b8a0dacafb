//! Reading the whole of `scan_agent_state` a range of blocks at a time.
//!
//! A few statements must look at every agent: the end of a list cycle (which agents the list
//! left out) and the staleness evaluation (which agents are stale). At a million agents one
//! sequential scan of the state table reads about a gigabyte and takes over a second on a
//! busy machine, which sqlx logs as a slow statement. Each of them instead runs once per
//! range of blocks (a TID range scan, PostgreSQL 14 and later), so a statement's work stays
//! the same at any fleet size and the whole pass costs what one scan did.
//!
//! Ranges are read one statement after another, so a row that a concurrent update moves to
//! another block may be read twice or not at all. The callers allow for that: each re-checks
//! what it found in the statement that writes, or runs under a lock that keeps the rows
//! still.

use sqlx::PgExecutor;

use super::{QueryContext, StoreError};

/// Blocks one statement reads: 64 MiB of 8 KiB pages, about 50,000 agents, a tenth of a
/// second from the page cache.
const RANGE_BLOCKS: i64 = 8_192;

/// The end of the last range: past the highest block number a table can have, so the last
/// range also reads the blocks the table grows by while the pass runs.
const END_OF_TABLE: i64 = u32::MAX as i64;

/// The rows of one range of blocks; `$1` is its first block, `$2` the block after its last.
/// A macro so that statements can `concat!` it.
macro_rules! in_block_range {
    () => {
        "ctid >= format('(%s,0)', $1::bigint)::tid AND ctid < format('(%s,0)', $2::bigint)::tid"
    };
}
pub(super) use in_block_range;

/// The ranges, as `($1, $2)` of [`in_block_range!`], that cover `scan_agent_state` as it is
/// now and whatever is appended to it later.
pub(super) async fn block_ranges<'e>(executor: impl PgExecutor<'e>) -> Result<Vec<(i64, i64)>, StoreError> {
    let blocks: i64 = sqlx::query_scalar(
        "SELECT pg_relation_size('scan_agent_state') / current_setting('block_size')::bigint",
    )
    .fetch_one(executor)
    .await
    .during("measuring the agent state table")?;
    Ok(ranges(blocks, RANGE_BLOCKS))
}

fn ranges(blocks: i64, per_range: i64) -> Vec<(i64, i64)> {
    let starts: Vec<i64> = (0..blocks.max(1)).step_by(usize::try_from(per_range).unwrap_or(1)).collect();
    let ends = starts.iter().skip(1).copied().chain([END_OF_TABLE]);
    starts.iter().copied().zip(ends).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_block_and_leave_the_last_one_open() {
        assert_eq!(ranges(0, 4), vec![(0, END_OF_TABLE)]);
        assert_eq!(ranges(4, 4), vec![(0, END_OF_TABLE)]);
        assert_eq!(ranges(9, 4), vec![(0, 4), (4, 8), (8, END_OF_TABLE)]);
    }
}
