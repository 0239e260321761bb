//! The shipper's in-memory index of its WAL directory from the cursor on:
//! the segments after the one being shipped, their sizes and so the
//! written position, kept current by inotify events and by full rescans
//! (at a session's start, when a successor is not yet confirmed, and on the
//! periodic safety-net timer). Moving on to the next segment costs
//! O(log n) in the number of files in the directory; it used to cost two
//! directory listings with a `stat` of every segment after the cursor
//! (issue 16: shipping 10,000 small segments took 217 s, quadratically).
//!
//! # Which name comes next
//!
//! A directory listing is not a snapshot: a readdir that runs while files
//! are created may return a newer file and miss older ones (the chaos soak
//! found it, seed 1029: two segments were skipped). So the index hands out
//! a successor only up to a *confirmed* name — one such that every segment
//! created before it is known to be in the index:
//!
//! - a name seen by two full scans merged one after the other: it existed
//!   before the second scan began, and so did every segment created before
//!   it (a WAL writer creates segments in name order), so the second scan
//!   returned them all;
//! - a name an inotify event reported while events are *trusted*: events
//!   are delivered in the order they happened and applied here in that
//!   order, so the events of every segment created earlier were applied
//!   first, and segments older than the watch were returned by the full
//!   scan that made events trusted. Events become trusted when a full scan
//!   that began after the watch started (or after the index was reset, or
//!   after an event was lost: a queue overflow or a watch error) is merged,
//!   and stop being trusted when an event is lost.
//!
//! The successor of a name is the first name after it, once that name (or
//! a later one) is confirmed.

use crate::locks::LockExt;
use drd_proto::SegmentName;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Events that change no file: open, read, close after reading.
pub(crate) fn is_read_only(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => false,
        notify::EventKind::Access(_) => true,
        _ => false,
    }
}

/// Files that are not segments: temporary files of writers.
pub(crate) fn ignored(name: &str) -> bool {
    name.ends_with(".tmp") || name.starts_with("xlogtemp")
}

/// Full rescans [`SourceIndex::successor`] runs, at most, before it answers
/// that no successor is confirmed yet: two confirm any name the first saw.
const SUCCESSOR_SCANS: usize = 3;

/// See the module documentation.
pub struct SourceIndex {
    dir: PathBuf,
    /// `dir` as the watch reports paths in it (made absolute).
    watched: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Names before it are neither kept nor added: the shipper needs
    /// nothing before its cursor.
    floor: Option<SegmentName>,
    entries: BTreeMap<SegmentName, Entry>,
    /// Entries whose size must be read again: new, changed, or perhaps
    /// removed.
    dirty: BTreeSet<SegmentName>,
    /// Sum of the sizes of the entries that are not dirty.
    clean_bytes: u64,
    /// Every segment created before this name is in `entries` (or was
    /// before the floor, or has been removed since).
    confirmed_upto: Option<SegmentName>,
    /// Full scans merged since the index was made.
    scans: u64,
    /// Counts resets and lost events; a scan that saw it change while it
    /// ran does not make events trusted.
    losses: u64,
    /// The watch is running (events may be trusted once a scan is merged).
    watching: bool,
    events_trusted: bool,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// None while dirty.
    size: Option<u64>,
    /// The last full scan that returned the name (0: none).
    last_scan: u64,
}

impl State {
    fn below_floor(&self, name: &SegmentName) -> bool {
        self.floor.as_ref().is_some_and(|f| name < f)
    }

    fn confirm(&mut self, name: &SegmentName) {
        if self.confirmed_upto.as_ref().is_none_or(|c| name > c) {
            self.confirmed_upto = Some(name.clone());
        }
    }

    fn make_dirty(&mut self, name: &SegmentName) {
        if let Some(e) = self.entries.get_mut(name) {
            if let Some(size) = e.size.take() {
                self.clean_bytes -= size;
            }
            self.dirty.insert(name.clone());
        }
    }

    /// A file of this name exists (or did a moment ago).
    fn note(&mut self, name: SegmentName) {
        if self.below_floor(&name) {
            return;
        }
        if self.events_trusted {
            self.confirm(&name);
        }
        self.entries.entry(name.clone()).or_insert(Entry {
            size: None,
            last_scan: 0,
        });
        self.make_dirty(&name);
    }

    fn remove(&mut self, name: &SegmentName) {
        if let Some(e) = self.entries.remove(name) {
            match e.size {
                Some(size) => self.clean_bytes -= size,
                None => {
                    self.dirty.remove(name);
                }
            }
        }
    }

    fn lose(&mut self) {
        self.losses += 1;
        self.events_trusted = false;
    }
}

/// The segment name of an event's path, if it is one.
fn segment_of(path: &Path) -> Option<SegmentName> {
    let name = path.file_name()?.to_str()?;
    if ignored(name) {
        return None;
    }
    SegmentName::new(name).ok()
}

impl SourceIndex {
    pub fn new(dir: &Path) -> Self {
        let watched = match dir.is_absolute() {
            true => dir.to_path_buf(),
            false => std::env::current_dir().map_or(dir.to_path_buf(), |cwd| cwd.join(dir)),
        };
        Self {
            dir: dir.to_path_buf(),
            watched,
            state: Mutex::default(),
        }
    }

    /// The watch is running: every event from now on reaches
    /// [`Self::on_event`].
    pub fn watch_started(&self) {
        let mut s = self.state.locked();
        s.watching = true;
        s.lose();
    }

    /// Applies one event of the directory's watch, in the order events come.
    pub fn on_event(&self, event: &notify::Result<notify::Event>) {
        use notify::event::{ModifyKind, RenameMode};
        use notify::EventKind;
        let mut s = self.state.locked();
        let e = match event {
            Ok(e) if e.need_rescan() => return s.lose(),
            Ok(e) => e,
            Err(_) => return s.lose(),
        };
        if is_read_only(&e.kind) {
            return;
        }
        // Only files directly in the directory: an event about the
        // directory itself (its path's last part may look like a segment
        // name) must not confirm anything.
        let names = e
            .paths
            .iter()
            .filter(|p| p.parent() == Some(self.watched.as_path()))
            .map(|p| segment_of(p));
        match e.kind {
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                for n in names.flatten() {
                    s.remove(&n);
                }
            }
            // Also reported as From and To on their own: nothing new.
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {}
            _ => {
                for n in names.flatten() {
                    s.note(n);
                }
            }
        }
    }

    /// Forgets everything and keeps only names from `floor` on; the next
    /// full scans fill the index again.
    pub fn reset(&self, floor: &SegmentName) {
        let mut s = self.state.locked();
        let watching = s.watching;
        let (scans, losses) = (s.scans, s.losses);
        *s = State {
            floor: Some(floor.clone()),
            scans,
            losses,
            watching,
            ..State::default()
        };
        s.lose();
    }

    /// The floor the index keeps names from, if set.
    pub fn floor(&self) -> Option<SegmentName> {
        self.state.locked().floor.clone()
    }

    /// Moves the floor up to `floor` (the cursor moved on): names before it
    /// are dropped.
    pub fn advance(&self, floor: &SegmentName) {
        let mut s = self.state.locked();
        if s.floor.as_ref().is_some_and(|f| floor <= f) {
            return;
        }
        let keep = s.entries.split_off(floor);
        let dropped = std::mem::replace(&mut s.entries, keep);
        for (name, e) in dropped {
            match e.size {
                Some(size) => s.clean_bytes -= size,
                None => {
                    s.dirty.remove(&name);
                }
            }
        }
        s.floor = Some(floor.clone());
    }

    /// Lists the directory and merges what it holds (names from the floor
    /// on). Only new names are `stat`ed, later, when a size is needed.
    pub fn rescan(&self) -> std::io::Result<()> {
        let (losses, watching, floor) = {
            let s = self.state.locked();
            (s.losses, s.watching, s.floor.clone())
        };
        let mut seen = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(name) = segment_of(Path::new(&entry.file_name())) else {
                continue;
            };
            if floor.as_ref().is_some_and(|f| &name < f) {
                continue;
            }
            // The entry's type from readdir, without a stat; a symlink is
            // followed when its size is read (and refused if not a file).
            match entry.file_type() {
                Ok(t) if t.is_dir() => continue,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            seen.push(name);
        }
        let mut s = self.state.locked();
        let previous = s.scans;
        let this = previous + 1;
        s.scans = this;
        for name in seen {
            if s.below_floor(&name) {
                continue;
            }
            let again = match s.entries.get_mut(&name) {
                Some(e) => {
                    let again = previous > 0 && e.last_scan == previous;
                    e.last_scan = this;
                    again
                }
                None => {
                    s.entries.insert(
                        name.clone(),
                        Entry {
                            size: None,
                            last_scan: this,
                        },
                    );
                    s.dirty.insert(name.clone());
                    false
                }
            };
            if again {
                s.confirm(&name);
            }
        }
        if !s.events_trusted {
            // Without trusted events, sizes may have changed unseen.
            let names: Vec<_> = s.entries.keys().cloned().collect();
            for n in names {
                s.make_dirty(&n);
            }
        }
        if watching && s.losses == losses {
            s.events_trusted = true;
        }
        Ok(())
    }

    /// Reads the size of a dirty entry again (dropping it if the file is
    /// gone). Called with the lock held: one `stat`.
    fn refresh(&self, s: &mut State, name: &SegmentName) -> std::io::Result<()> {
        if !s.dirty.contains(name) {
            return Ok(());
        }
        match std::fs::metadata(self.dir.join(name.as_str())) {
            Ok(m) if m.is_file() => {
                s.dirty.remove(name);
                if let Some(e) = s.entries.get_mut(name) {
                    e.size = Some(m.len());
                    s.clean_bytes += m.len();
                }
                Ok(())
            }
            Ok(_) => {
                s.remove(name);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                s.remove(name);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The size of segment `name`, None if it is not in the directory.
    pub fn size(&self, name: &SegmentName) -> std::io::Result<Option<u64>> {
        let mut s = self.state.locked();
        self.refresh(&mut s, name)?;
        Ok(s.entries.get(name).and_then(|e| e.size))
    }

    /// Marks `name` as changed: its size is read again when next asked.
    pub fn changed(&self, name: &SegmentName) {
        self.state.locked().make_dirty(name);
    }

    /// The first segment after `name` that is in the directory, and whether
    /// it is confirmed (see the module documentation).
    fn first_after(
        &self,
        s: &mut State,
        name: &SegmentName,
    ) -> std::io::Result<Option<(SegmentName, bool)>> {
        loop {
            let Some(next) = s
                .entries
                .range((Bound::Excluded(name), Bound::Unbounded))
                .next()
                .map(|(n, _)| n.clone())
            else {
                return Ok(None);
            };
            self.refresh(s, &next)?;
            if s.entries.contains_key(&next) {
                let confirmed = s.confirmed_upto.as_ref().is_some_and(|c| c >= &next);
                return Ok(Some((next, confirmed)));
            }
        }
    }

    /// Whether any segment after `name` is in the directory (so `name` is
    /// sealed), confirmed or not.
    pub fn has_after(&self, name: &SegmentName) -> std::io::Result<bool> {
        let mut s = self.state.locked();
        Ok(self.first_after(&mut s, name)?.is_some())
    }

    /// The segment that comes after `name`, rescanning while the candidate
    /// is not confirmed; None if there is none, or none confirmed yet.
    pub fn successor(&self, name: &SegmentName) -> std::io::Result<Option<SegmentName>> {
        for _ in 0..SUCCESSOR_SCANS {
            {
                let mut s = self.state.locked();
                match self.first_after(&mut s, name)? {
                    None => return Ok(None),
                    Some((next, true)) => return Ok(Some(next)),
                    Some((_, false)) => {}
                }
            }
            self.rescan()?;
        }
        Ok(None)
    }

    /// The written position, given that the floor's segment starts at
    /// `start`: `start` plus the sizes of the segments from the floor on.
    pub fn written(&self, start: u64) -> std::io::Result<u64> {
        let mut s = self.state.locked();
        let dirty: Vec<_> = s.dirty.iter().cloned().collect();
        for n in &dirty {
            self.refresh(&mut s, n)?;
        }
        // `start` may come from the replica's Welcome: saturate, never wrap.
        Ok(start.saturating_add(s.clean_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: u64) -> SegmentName {
        SegmentName::new(format!("00000001{:016X}", n)).unwrap()
    }

    fn create(dir: &Path, n: u64, len: usize) {
        std::fs::write(dir.join(name(n).as_str()), vec![0u8; len]).unwrap();
    }

    fn event(kind: notify::EventKind, dir: &Path, n: u64) -> notify::Result<notify::Event> {
        Ok(notify::Event::new(kind).add_path(dir.join(name(n).as_str())))
    }

    #[test]
    fn a_name_seen_by_one_scan_only_is_not_a_successor() {
        let d = tempfile::tempdir().unwrap();
        for n in [1, 2, 3] {
            create(d.path(), n, 10);
        }
        let idx = SourceIndex::new(d.path());
        idx.reset(&name(1));
        idx.rescan().unwrap();
        // One scan: 2 may have been returned while an older name was missed.
        assert!(idx.has_after(&name(1)).unwrap());
        assert_eq!(idx.state.locked().confirmed_upto, None);
        // successor() rescans: a second scan confirms what the first saw.
        assert_eq!(idx.successor(&name(1)).unwrap(), Some(name(2)));
        assert_eq!(idx.state.locked().scans, 2);
        assert_eq!(idx.written(100).unwrap(), 130);
        idx.advance(&name(2));
        assert_eq!(idx.written(110).unwrap(), 130);
        assert_eq!(idx.successor(&name(2)).unwrap(), Some(name(3)));
        assert_eq!(idx.successor(&name(3)).unwrap(), None);
        assert_eq!(idx.state.locked().scans, 2, "no scan for confirmed names");
    }

    #[test]
    fn trusted_events_confirm_and_lost_events_do_not() {
        use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};
        use notify::EventKind;
        let d = tempfile::tempdir().unwrap();
        create(d.path(), 1, 4);
        let idx = SourceIndex::new(d.path());
        idx.watch_started();
        idx.reset(&name(1));
        idx.rescan().unwrap();
        create(d.path(), 2, 4);
        idx.on_event(&event(EventKind::Create(CreateKind::File), d.path(), 2));
        // Trusted: no scan needed.
        assert_eq!(idx.successor(&name(1)).unwrap(), Some(name(2)));
        assert_eq!(idx.state.locked().scans, 1);
        // The active segment grows: its size is read again.
        std::fs::write(d.path().join(name(2).as_str()), [0u8; 9]).unwrap();
        idx.on_event(&event(
            EventKind::Modify(ModifyKind::Data(notify::event::DataChange::Any)),
            d.path(),
            2,
        ));
        assert_eq!(idx.size(&name(2)).unwrap(), Some(9));
        assert_eq!(idx.written(0).unwrap(), 13);
        // An event about the directory itself names no segment, even when
        // the directory's name would be a valid one.
        idx.on_event(&Ok(notify::Event::new(EventKind::Modify(
            ModifyKind::Metadata(notify::event::MetadataKind::Any),
        ))
        .add_path(d.path().to_path_buf())));
        assert_eq!(idx.state.locked().confirmed_upto, Some(name(2)));
        // A lost event (queue overflow): the next name needs scans again.
        idx.on_event(&Ok(
            notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan)
        ));
        create(d.path(), 3, 4);
        idx.on_event(&event(
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            d.path(),
            3,
        ));
        assert_eq!(idx.state.locked().confirmed_upto, Some(name(2)));
        assert_eq!(idx.successor(&name(2)).unwrap(), Some(name(3)));
        assert!(idx.state.locked().scans >= 2);
        // A removal drops the name.
        std::fs::remove_file(d.path().join(name(3).as_str())).unwrap();
        idx.on_event(&event(EventKind::Remove(RemoveKind::File), d.path(), 3));
        assert!(!idx.has_after(&name(2)).unwrap());
        assert_eq!(idx.written(0).unwrap(), 13);
    }

    #[test]
    fn the_first_scan_after_a_reset_does_not_trust_itself() {
        // Seed 1029's shape: the first listing holds 0C but not 0A, 0B.
        let d = tempfile::tempdir().unwrap();
        create(d.path(), 9, 1);
        create(d.path(), 12, 1);
        let idx = SourceIndex::new(d.path());
        idx.watch_started();
        idx.reset(&name(9));
        idx.rescan().unwrap();
        // 0A and 0B appear, their events not yet applied: the successor
        // comes from a second scan, which has them.
        create(d.path(), 10, 1);
        create(d.path(), 11, 1);
        assert_eq!(idx.successor(&name(9)).unwrap(), Some(name(10)));
    }
}
