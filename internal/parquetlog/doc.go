// Package parquetlog writes one Kafka partition of telemetry batches to S3
// as Parquet files, every reading exactly once, and keeps that promise when
// writers crash, restart, or run at the same time for the same partition.
// parquet-sink runs one Writer per assigned partition; replay's Parquet
// backfill runs one per replayed partition under its own prefix.
//
// # Windows
//
// Records are written in windows: consecutive offsets [first, end) whose
// rows go to one file per (table, UTC hour) they fall in, each named by the
// window's first offset (parquetout.ObjectKey). A window ends where its
// Rules say, and the rules read nothing but the records: before a record
// whose Kafka timestamp is MaxAge past the window's first record's, or after
// the record that brings it to MaxRows rows or MaxBytes bytes of Parquet.
// So the same records read from the same offset with the same filter state
// always make the same windows, the same object names and the same rows: a
// restart, a new owner, or a replay from scratch re-creates what was there.
//
// A quiet partition (read to its end, transaction markers included: a
// transactional topic's high watermark counts its last commit marker, so
// the caller reads markers to know it is there) gets its window closed by
// the wall clock, once it is MaxAge + QuietMargin past the window's first record.
// This agrees with the rules: a record still to come will carry a Kafka
// timestamp no earlier than QuietMargin before the wall clock (true of
// LogAppendTime topics, and of CreateTime ones whose producers hand records
// over within QuietMargin), so the age rule would have ended the window
// before it anyway. Rows arriving late in event time go to their own hour's
// file of the window they arrive in, so a window makes one file per hour
// it touches, not one per late batch.
//
// Duplicates (a batch the agent re-sent, a produce the bridge retried) are
// dropped by batch identity (vehicle, epoch, seq) with a filter whose state
// is part of the checkpoint (see DedupConfig for what it forgets and when).
//
// # The checkpoint and fencing
//
// Each partition has one checkpoint object on S3,
// _sink/checkpoints/{topic}+{partition}.json: the next offset to write from,
// the window being written if any (its offsets and file keys), the
// duplicate filter's objects, a generation and the name of the writer that
// claimed it. Every write of it is a compare-and-swap (S3 If-Match the ETag
// its writer holds; If-None-Match for the first), and no two versions are
// alike, so a writer's ETag names exactly the version it last wrote.
//
// A Writer goes through these states:
//
//	claim    read the checkpoint; write it back with generation+1 and its own
//	         name (CAS). From that moment every older writer's next CAS fails.
//	         Load the duplicate filter; delete state objects nobody refers to.
//	fill     read records from the checkpoint's next offset; stream rows into
//	         the window's files as multipart uploads (invisible until complete).
//	commit   1 finish the files' encoding
//	         2 intent: CAS the checkpoint to name the window [first, end) and its keys
//	         3 complete the uploads create-only (If-None-Match: *)
//	         4 store the filter's delta for the window (and now and then a new
//	           base), content-addressed, create-only
//	         5 CAS the checkpoint: next offset = end, no window, new filter refs
//	         6 delete the filter objects the checkpoint no longer names
//	fenced   any CAS failed: another writer claimed the partition. Abort the
//	         uploads, drop the window, write nothing more (ErrFenced).
//
// A writer that finds a window in the checkpoint it claimed (a writer before
// it stopped between 2 and 5) does not apply the rules to that window: it
// writes exactly [first, end) again, from the same filter state, so it makes
// the same files with the same rows. Its create-only completes find some of
// them already there; that is expected, and they are left as they are.
//
// # Why each crash point is safe
//
//   - During claim, before its CAS: nothing changed.
//   - During fill: uploads not completed are invisible (a bucket lifecycle
//     rule for incomplete multipart uploads reclaims their parts); the next
//     owner re-reads from the checkpoint and makes the same window.
//   - Between 2 and 5: the checkpoint names the window; some of its files
//     may exist. The next owner writes the same window again (above). The
//     files readers may already see hold exactly the rows that window
//     commits, never rows of another window.
//   - Between 4 and 5: the filter objects are named by their content and
//     offset; the next owner writes the same ones (create-only finds them)
//     or, at its claim, deletes them as unreferenced.
//   - After 5: committed. Deleting superseded filter objects (6) is safe
//     because no later checkpoint can name them: checkpoints only move on.
//
// # Why a stale writer is harmless
//
// A writer paused past its session (GC, SIGSTOP, a stalled S3 call) and then
// resumed still believes it owns the partition. Everything it can do:
//
//   - CAS the checkpoint: fails once anyone claimed after it, so it can never
//     move the checkpoint, back or forward. It stops at once.
//   - Complete an upload: only of a window it already recorded with a
//     successful intent CAS, which was before the new owner's claim. The new
//     owner inherited that exact window and writes the same rows; and the
//     completes are create-only, so an object already there is not replaced.
//     A window it did not record can never be completed (step 2 precedes 3).
//   - Store filter objects: content-addressed and create-only; unreferenced
//     ones are deleted by the next claim.
//   - Delete: only the filter objects its own successful commit superseded,
//     which nothing will name again.
//
// It never deletes a data file, so a committed data object is never
// replaced or removed. The one case where a file exists at a key whose
// window the checkpoint never recorded (the checkpoint was deleted or reset,
// or a second sink writes the same prefix) is refused as ErrConflict: the
// file is not replaced and the partition stops until someone looks.
package parquetlog
