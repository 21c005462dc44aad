//! The memory backend's inbox and outbox: rows by id, one FIFO of open rows per
//! conversation, and an index of the conversations whose head may be claimable.
//!
//! The claim contract (see [`Inbox::claim_inbox`](crate::Inbox::claim_inbox)): per
//! conversation only its first unfinished row in `(due_at, id)` order, only when due, not
//! backing off (`retry_at`), and only while no row of the conversation is claimed under a
//! live lease (an inbox's conversation also waits for its replies out with a sender: the
//! caller of [`Queue::pick`] tells which are held back). Walking the open rows to find
//! those heads costs time proportional to the backlog on every claim; here every
//! conversation instead sits in exactly one *gate*:
//!
//! - `Ready`: keyed by its head's `(due_at, id)` — a claim pops these in order until the
//!   next head is not due yet;
//! - `Waiting`: its head backs off until `retry_at` — a claim first moves the ones whose
//!   time came to `Ready`;
//! - `Leased`: a row is claimed — a claim first moves the ones whose last lease ended;
//! - `Idle`: no open rows (or, for the length of one claim, picked by it).
//!
//! The gates are min-heaps with lazy deletion: leaving a gate only changes the
//! conversation's `gate` field, and a heap entry that no longer matches it is dropped when
//! it surfaces (or when stale entries outnumber live ones, see [`GateHeap`]). Every claim
//! still checks its candidates exactly against the request's clock, so callers whose clocks
//! disagree get the same answers as from a scan, only the common case is fast.
//!
//! [`Queue::reclaim`] and [`Queue::purge_finished`] visit every conversation the queue
//! knows (idle ones until a purge forgets them): they are housekeeping, not per message.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::error::{StoreError, StoreResult};
use crate::types::*;

use super::HashMap;

/// One inbox or outbox row.
#[derive(Debug, Clone)]
pub(super) struct QueueRow<T> {
    pub(super) conversation: ConversationKey,
    /// The conversation's index in [`Queue::conversations`], so that updates need not hash
    /// the key again.
    conversation_index: usize,
    pub(super) due_at: i64,
    pub(super) status: QueueStatus,
    pub(super) attempts: i64,
    pub(super) lease_until: Option<i64>,
    pub(super) retry_at: Option<i64>,
    pub(super) last_error: Option<String>,
    pub(super) finished_at: Option<i64>,
    pub(super) data: T,
}

impl<T> QueueRow<T> {
    /// Claimed under a lease still live at `now`.
    fn under_live_lease(&self, now: i64) -> bool {
        self.status == QueueStatus::Claimed && self.lease_until.is_some_and(|l| l >= now)
    }

    /// Claimable at `now` if it is its conversation's head and the conversation is free.
    fn claimable_at(&self, now: i64) -> bool {
        self.due_at <= now
            && match self.status {
                QueueStatus::Pending => self.retry_at.is_none_or(|r| r <= now),
                QueueStatus::Claimed => self.lease_until.is_none_or(|l| l < now),
                QueueStatus::Done | QueueStatus::Failed => false,
            }
    }
}

/// A queue's rows in a vector indexed by id (ids only grow; ids taken by other
/// organizations' rows leave empty slots). Cheaper than a hash map of large rows: no
/// hashing, no rehash moves of whole rows.
#[derive(Debug)]
pub(super) struct Rows<T> {
    base: i64,
    slots: Vec<Option<QueueRow<T>>>,
    live: usize,
}

impl<T> Default for Rows<T> {
    fn default() -> Self {
        Rows { base: 0, slots: Vec::new(), live: 0 }
    }
}

impl<T> Rows<T> {
    #[inline]
    fn slot(&self, id: i64) -> Option<usize> {
        let i = id.checked_sub(self.base)?;
        usize::try_from(i).ok().filter(|&i| i < self.slots.len())
    }

    #[inline]
    pub(super) fn get(&self, id: i64) -> Option<&QueueRow<T>> {
        self.slot(id).and_then(|i| self.slots[i].as_ref())
    }

    #[inline]
    pub(super) fn get_mut(&mut self, id: i64) -> Option<&mut QueueRow<T>> {
        self.slot(id).and_then(|i| self.slots[i].as_mut())
    }

    pub(super) fn contains_key(&self, id: i64) -> bool {
        self.get(id).is_some()
    }

    fn len(&self) -> usize {
        self.live
    }

    /// Inserts a row whose id is above every id inserted before.
    fn insert(&mut self, id: i64, row: QueueRow<T>) {
        if self.slots.is_empty() {
            self.base = id;
        }
        let i = usize::try_from(id - self.base).expect("queue ids only grow");
        if i >= self.slots.len() {
            self.slots.resize_with(i, || None);
            self.slots.push(Some(row));
            self.live += 1;
        } else {
            if self.slots[i].is_none() {
                self.live += 1;
            }
            self.slots[i] = Some(row);
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&QueueRow<T>) -> bool) {
        let mut live = 0;
        for slot in &mut self.slots {
            if let Some(row) = slot {
                if keep(row) {
                    live += 1;
                } else {
                    *slot = None;
                }
            }
        }
        // Drop the empty prefix so purged rows free their slots too.
        let first = self.slots.iter().position(Option::is_some).unwrap_or(self.slots.len());
        self.slots.drain(..first);
        self.base += first as i64;
        if self.slots.is_empty() {
            self.base = 0;
        }
        self.live = live;
    }
}

/// Where a conversation stands in its queue's claim index (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Idle,
    Ready { due_at: i64, id: i64 },
    Waiting { retry_at: i64 },
    Leased { until: i64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GateKind {
    Ready,
    Waiting,
    Leased,
}

impl GateKind {
    /// The gate a heap entry of this kind stands for.
    fn gate(self, (first, second, _): HeapEntry) -> Gate {
        match self {
            GateKind::Ready => Gate::Ready { due_at: first, id: second },
            GateKind::Waiting => Gate::Waiting { retry_at: first },
            GateKind::Leased => Gate::Leased { until: first },
        }
    }
}

/// `(key, tie-break, conversation index)`, smallest first.
type HeapEntry = (i64, i64, usize);

/// The conversations in one gate, smallest key first. Entries are added when a conversation
/// enters the gate and never removed when it leaves; `live` counts the conversations really
/// in the gate, and the heap is rebuilt from those when stale entries outnumber them.
#[derive(Debug)]
struct GateHeap {
    kind: GateKind,
    heap: BinaryHeap<Reverse<HeapEntry>>,
    live: usize,
}

impl GateHeap {
    fn new(kind: GateKind) -> Self {
        GateHeap { kind, heap: BinaryHeap::new(), live: 0 }
    }

    fn peek(&self) -> Option<HeapEntry> {
        self.heap.peek().map(|Reverse(e)| *e)
    }

    fn is_current(&self, entry: HeapEntry, conversations: &[Conversation]) -> bool {
        conversations.get(entry.2).is_some_and(|c| c.gate == self.kind.gate(entry))
    }

    fn compact_if_stale(&mut self, conversations: &[Conversation]) {
        if self.heap.len() > 2 * self.live + STALE_SLACK {
            let kind = self.kind;
            self.heap.retain(|Reverse(e)| conversations.get(e.2).is_some_and(|c| c.gate == kind.gate(*e)));
        }
    }
}

/// How many stale entries a gate heap may hold beyond twice its live ones before it is
/// rebuilt (small in tests, so that the model test rebuilds often).
const STALE_SLACK: usize = if cfg!(test) { 4 } else { 1024 };

/// One conversation's part of a queue.
#[derive(Debug)]
struct Conversation {
    /// Unfinished rows, in `(due_at, id)` order; the front is the head.
    open: VecDeque<(i64, i64)>,
    /// Rows with status `Claimed`, under a live lease or an expired one (usually at most one).
    claimed: Vec<i64>,
    gate: Gate,
}

/// An inbox or an outbox (of one organization).
#[derive(Debug)]
pub(super) struct Queue<T> {
    pub(super) rows: Rows<T>,
    conversations: Vec<Conversation>,
    conversation_index: HashMap<ConversationKey, usize>,
    free_conversations: Vec<usize>,
    ready: GateHeap,
    waiting: GateHeap,
    leased: GateHeap,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue {
            rows: Rows::default(),
            conversations: Vec::new(),
            conversation_index: HashMap::default(),
            free_conversations: Vec::new(),
            ready: GateHeap::new(GateKind::Ready),
            waiting: GateHeap::new(GateKind::Waiting),
            leased: GateHeap::new(GateKind::Leased),
        }
    }
}

/// A clock earlier than any: settling with it treats every claim as live and every
/// `retry_at` as still ahead, the safe view when the caller's clock is not at hand (a claim
/// moves a conversation on once its own clock passes those times).
const NO_CLOCK: i64 = i64::MIN;

impl<T> Queue<T> {
    pub(super) fn push(&mut self, id: i64, conversation: ConversationKey, due_at: i64, data: T) {
        let index = self.conversation_index(&conversation);
        let entry = (due_at, id);
        let open = &mut self.conversations[index].open;
        let head_changed = match open.back() {
            None => {
                open.push_back(entry);
                true
            }
            // The usual case: later than everything open (ids only grow).
            Some(&last) if last < entry => {
                open.push_back(entry);
                false
            }
            // Due before rows already waiting, e.g. a message ahead of a scheduled wake-up.
            Some(_) => {
                let at = open.partition_point(|&e| e < entry);
                open.insert(at, entry);
                at == 0
            }
        };
        self.rows.insert(
            id,
            QueueRow {
                conversation,
                conversation_index: index,
                due_at,
                status: QueueStatus::Pending,
                attempts: 0,
                lease_until: None,
                retry_at: None,
                last_error: None,
                finished_at: None,
                data,
            },
        );
        if head_changed {
            self.settle(index, NO_CLOCK);
        }
    }

    /// The conversation's index, created on its first row (only then is the key copied).
    fn conversation_index(&mut self, key: &ConversationKey) -> usize {
        if let Some(&index) = self.conversation_index.get(key) {
            return index;
        }
        let conversation = Conversation { open: VecDeque::new(), claimed: Vec::new(), gate: Gate::Idle };
        let index = match self.free_conversations.pop() {
            Some(index) => {
                self.conversations[index] = conversation;
                index
            }
            None => {
                self.conversations.push(conversation);
                self.conversations.len() - 1
            }
        };
        self.conversation_index.insert(key.clone(), index);
        index
    }

    /// Takes the claimable heads at `now` out of the index, in `(due_at, id)` order, at most
    /// `limit`, handing each to `take` — which must [`take_claim`](Queue::take_claim) or
    /// [`release`](Queue::release) it before the store's lock is let go. A conversation for
    /// which `held_back` is true is passed over and stays ready.
    pub(super) fn pick(
        &mut self,
        now: i64,
        limit: usize,
        held_back: impl Fn(&ConversationKey) -> bool,
        mut take: impl FnMut(&mut Self, (i64, i64)),
    ) {
        self.open_gates(now);
        let mut taken = 0;
        let mut passed_over = Vec::new();
        while taken < limit {
            let Some(entry) = self.ready.peek() else { break };
            let (due_at, id, index) = entry;
            if due_at > now {
                break;
            }
            self.ready.heap.pop();
            if !self.ready.is_current(entry, &self.conversations) {
                continue;
            }
            if self.head_claimable(index, now) && !self.rows.get(id).is_some_and(|row| held_back(&row.conversation)) {
                self.set_gate(index, Gate::Idle);
                take(self, (due_at, id));
                taken += 1;
            } else {
                // Held back, or callers' clocks disagree (this one is behind a retry time or
                // a lease end another claim already moved past): it stays ready.
                passed_over.push(entry);
            }
        }
        self.ready.heap.extend(passed_over.into_iter().map(Reverse));
    }

    /// Moves the conversations whose retry time came or whose leases all ended to `Ready`
    /// (as seen at `now`).
    fn open_gates(&mut self, now: i64) {
        while let Some(entry) = self.waiting.peek() {
            if entry.0 > now {
                break;
            }
            self.waiting.heap.pop();
            if self.waiting.is_current(entry, &self.conversations) {
                self.settle(entry.2, now);
            }
        }
        while let Some(entry) = self.leased.peek() {
            if entry.0 >= now {
                break;
            }
            self.leased.heap.pop();
            if self.leased.is_current(entry, &self.conversations) {
                self.settle(entry.2, now);
            }
        }
    }

    /// Whether a row of `conversation` is claimed under a lease live at `now`.
    pub(super) fn has_live_claim(&self, conversation: &ConversationKey, now: i64) -> bool {
        self.conversation_index
            .get(conversation)
            .and_then(|&index| self.conversations.get(index))
            .is_some_and(|c| c.claimed.iter().any(|&id| self.rows.get(id).is_some_and(|r| r.under_live_lease(now))))
    }

    /// The exact claim rule for one conversation at `now`.
    fn head_claimable(&self, index: usize, now: i64) -> bool {
        let Some(conversation) = self.conversations.get(index) else { return false };
        let busy = conversation.claimed.iter().any(|&id| self.rows.get(id).is_some_and(|r| r.under_live_lease(now)));
        !busy
            && conversation
                .open
                .front()
                .and_then(|&(_, head)| self.rows.get(head))
                .is_some_and(|row| row.claimable_at(now))
    }

    /// Puts a conversation in the gate its rows call for, as seen at `now`.
    fn settle(&mut self, index: usize, now: i64) {
        let Some(conversation) = self.conversations.get(index) else { return };
        let rows = &self.rows;
        let live_lease =
            conversation.claimed.iter().filter_map(|&id| rows.get(id)?.lease_until).filter(|&l| l >= now).max();
        let gate = match (live_lease, conversation.open.front()) {
            (Some(until), _) => Gate::Leased { until },
            (None, None) => Gate::Idle,
            (None, Some(&(due_at, id))) => match rows.get(id) {
                Some(row) if row.status == QueueStatus::Pending => match row.retry_at {
                    Some(retry_at) if retry_at > due_at.max(now) => Gate::Waiting { retry_at },
                    _ => Gate::Ready { due_at, id },
                },
                _ => Gate::Ready { due_at, id },
            },
        };
        self.set_gate(index, gate);
    }

    fn set_gate(&mut self, index: usize, gate: Gate) {
        let Some(conversation) = self.conversations.get_mut(index) else { return };
        if conversation.gate == gate {
            return;
        }
        let left = std::mem::replace(&mut conversation.gate, gate);
        match gate {
            Gate::Idle => {}
            Gate::Ready { due_at, id } => self.ready.enter((due_at, id, index)),
            Gate::Waiting { retry_at } => self.waiting.enter((retry_at, 0, index)),
            Gate::Leased { until } => self.leased.enter((until, 0, index)),
        }
        let left_heap = match left {
            Gate::Idle => return,
            Gate::Ready { .. } => &mut self.ready,
            Gate::Waiting { .. } => &mut self.waiting,
            Gate::Leased { .. } => &mut self.leased,
        };
        left_heap.live -= 1;
        left_heap.compact_if_stale(&self.conversations);
    }

    /// Claims a row [`pick`](Queue::pick) returned until `lease_until`.
    pub(super) fn take_claim(&mut self, id: i64, lease_until: i64) {
        let Some(row) = self.rows.get_mut(id) else { return };
        row.status = QueueStatus::Claimed;
        row.attempts += 1;
        row.lease_until = Some(lease_until);
        let index = row.conversation_index;
        if let Some(conversation) = self.conversations.get_mut(index) {
            // An expired claim taken again is already listed.
            if !conversation.claimed.contains(&id) {
                conversation.claimed.push(id);
            }
        }
        self.settle(index, NO_CLOCK);
    }

    /// Returns a row [`pick`](Queue::pick) returned but the claim did not take to the index.
    pub(super) fn release(&mut self, id: i64) {
        if let Some(index) = self.rows.get(id).map(|r| r.conversation_index) {
            self.settle(index, NO_CLOCK);
        }
    }

    pub(super) fn check_claim(&self, what: &'static str, claim: Claim) -> StoreResult<()> {
        match self.rows.get(claim.id) {
            None => Err(StoreError::NotFound { what, id: claim.id.to_string() }),
            Some(row) if row.status == QueueStatus::Claimed && row.attempts == claim.attempt => Ok(()),
            Some(_) => Err(StoreError::LeaseLost { what, id: claim.id, attempt: claim.attempt }),
        }
    }

    /// Finishes a claimed row (done or failed for good).
    pub(super) fn finish(&mut self, id: i64, status: QueueStatus, now: Option<i64>, error: Option<&str>) {
        let Some(row) = self.rows.get_mut(id) else { return };
        row.status = status;
        row.lease_until = None;
        row.finished_at = now;
        if let Some(e) = error {
            row.last_error = Some(e.to_owned());
        }
        let (index, entry) = (row.conversation_index, (row.due_at, id));
        let Some(conversation) = self.conversations.get_mut(index) else { return };
        if conversation.open.front() == Some(&entry) {
            conversation.open.pop_front();
        } else if let Ok(at) = conversation.open.binary_search(&entry) {
            conversation.open.remove(at);
        }
        conversation.claimed.retain(|&c| c != id);
        self.settle(index, NO_CLOCK);
    }

    /// Puts a claimed row back to pending, claimable again from `retry_at`.
    pub(super) fn retry(&mut self, id: i64, retry_at: i64, error: &str) {
        let Some(row) = self.rows.get_mut(id) else { return };
        row.status = QueueStatus::Pending;
        row.lease_until = None;
        row.retry_at = Some(retry_at);
        row.last_error = Some(error.to_owned());
        let index = row.conversation_index;
        if let Some(conversation) = self.conversations.get_mut(index) {
            conversation.claimed.retain(|&c| c != id);
        }
        self.settle(index, NO_CLOCK);
    }

    /// Returns claimed rows whose lease ended before `now` to pending; the count.
    pub(super) fn reclaim(&mut self, now: i64) -> u64 {
        let mut reclaimed = 0;
        for index in 0..self.conversations.len() {
            let conversation = &mut self.conversations[index];
            if conversation.claimed.is_empty() {
                continue;
            }
            let rows = &mut self.rows;
            let before = conversation.claimed.len();
            conversation.claimed.retain(|&id| match rows.get_mut(id) {
                Some(row) if row.status == QueueStatus::Claimed && row.lease_until.is_some_and(|l| l < now) => {
                    row.status = QueueStatus::Pending;
                    row.lease_until = None;
                    false
                }
                _ => true,
            });
            let returned = before - conversation.claimed.len();
            if returned > 0 {
                reclaimed += returned as u64;
                self.settle(index, NO_CLOCK);
            }
        }
        reclaimed
    }

    /// Deletes rows finished before `before`, and forgets conversations with nothing open;
    /// the number of rows deleted.
    pub(super) fn purge_finished(&mut self, before: i64) -> u64 {
        let (conversations, free) = (&mut self.conversations, &mut self.free_conversations);
        self.conversation_index.retain(|_, &mut index| {
            let Some(conversation) = conversations.get_mut(index) else { return false };
            let idle =
                conversation.open.is_empty() && conversation.claimed.is_empty() && conversation.gate == Gate::Idle;
            if idle {
                // Free its buffers; the slot goes to the next new conversation.
                *conversation = Conversation { open: VecDeque::new(), claimed: Vec::new(), gate: Gate::Idle };
                free.push(index);
            }
            !idle
        });
        let before_len = self.rows.len();
        self.rows.retain(|r| {
            !(matches!(r.status, QueueStatus::Done | QueueStatus::Failed) && r.finished_at.is_some_and(|f| f < before))
        });
        (before_len - self.rows.len()) as u64
    }
}

impl GateHeap {
    fn enter(&mut self, entry: HeapEntry) {
        self.heap.push(Reverse(entry));
        self.live += 1;
    }
}

#[cfg(test)]
mod tests {
    //! The queue against a model that scans every open row on each claim (the rule as the
    //! trait states it), over random operation sequences, with callers' clocks that jitter.

    use std::collections::{BTreeMap, HashSet};

    use super::*;

    #[derive(Debug, Clone)]
    struct ModelRow {
        conversation: usize,
        due_at: i64,
        status: QueueStatus,
        attempts: i64,
        lease_until: Option<i64>,
        retry_at: Option<i64>,
    }

    impl ModelRow {
        fn live_claim(&self, now: i64) -> bool {
            self.status == QueueStatus::Claimed && self.lease_until.is_some_and(|l| l >= now)
        }
        fn open(&self) -> bool {
            matches!(self.status, QueueStatus::Pending | QueueStatus::Claimed)
        }
    }

    #[derive(Default)]
    struct Model {
        rows: BTreeMap<i64, ModelRow>,
    }

    impl Model {
        fn claim(&mut self, now: i64, limit: usize, lease_until: i64, held: Option<usize>) -> Vec<i64> {
            let mut open: Vec<(i64, i64)> =
                self.rows.iter().filter(|(_, r)| r.open() && r.due_at <= now).map(|(&id, r)| (r.due_at, id)).collect();
            open.sort();
            let mut seen = HashSet::new();
            let mut out = Vec::new();
            for (_, id) in open {
                if out.len() >= limit {
                    break;
                }
                let row = &self.rows[&id];
                if row.live_claim(now) || !seen.insert(row.conversation) {
                    continue;
                }
                let blocked = self.rows.values().any(|r| r.conversation == row.conversation && r.live_claim(now));
                let eligible = match row.status {
                    QueueStatus::Pending => row.retry_at.is_none_or(|r| r <= now),
                    QueueStatus::Claimed => row.lease_until.is_none_or(|l| l < now),
                    _ => false,
                };
                if !blocked && eligible && held != Some(row.conversation) {
                    out.push(id);
                }
            }
            for id in &out {
                let row = self.rows.get_mut(id).unwrap();
                row.status = QueueStatus::Claimed;
                row.attempts += 1;
                row.lease_until = Some(lease_until);
            }
            out
        }
    }

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> i64 {
            (self.next() % n) as i64
        }
    }

    fn key(n: usize) -> ConversationKey {
        ConversationKey::new("o", "b", format!("c{n}"))
    }

    fn run(seed: u64, steps: usize, conversations: usize) {
        let mut rng = Rng(seed | 1);
        let mut queue: Queue<()> = Queue::default();
        let mut model = Model::default();
        let mut next_id = 0;
        let mut clock = 0;
        for step in 0..steps {
            clock += rng.below(3);
            // Callers' clocks disagree a little.
            let now = clock + rng.below(7) - 3;
            match rng.below(100) {
                0..=34 => {
                    next_id += rng.below(3) + 1;
                    let conversation = rng.below(conversations as u64) as usize;
                    let due_at = if rng.below(10) == 0 { now + 20 + rng.below(40) } else { now + rng.below(9) - 4 };
                    queue.push(next_id, key(conversation), due_at, ());
                    model.rows.insert(
                        next_id,
                        ModelRow {
                            conversation,
                            due_at,
                            status: QueueStatus::Pending,
                            attempts: 0,
                            lease_until: None,
                            retry_at: None,
                        },
                    );
                }
                35..=64 => {
                    let limit = rng.below(4) as usize;
                    let lease_until = now + rng.below(12);
                    // Now and then one conversation is held back (a reply of its out).
                    let held = (rng.below(3) == 0).then(|| rng.below(conversations as u64) as usize);
                    let expected = model.claim(now, limit, lease_until, held);
                    let mut got = Vec::new();
                    let held_back = |k: &ConversationKey| held.is_some_and(|c| *k == key(c));
                    queue.pick(now, limit, held_back, |queue, (_, id)| {
                        queue.take_claim(id, lease_until);
                        got.push(id);
                    });
                    assert_eq!(got, expected, "seed {seed} step {step}: claim at {now} limit {limit}");
                }
                65..=84 => {
                    let claimed: Vec<i64> = model
                        .rows
                        .iter()
                        .filter(|(_, r)| r.status == QueueStatus::Claimed)
                        .map(|(&id, _)| id)
                        .collect();
                    if claimed.is_empty() {
                        continue;
                    }
                    let id = claimed[rng.below(claimed.len() as u64) as usize];
                    let row = model.rows.get_mut(&id).unwrap();
                    let claim = Claim { id, attempt: row.attempts };
                    queue.check_claim("row", claim).unwrap();
                    row.lease_until = None;
                    match rng.below(4) {
                        0 => {
                            let retry_at = now + rng.below(10);
                            row.status = QueueStatus::Pending;
                            row.retry_at = Some(retry_at);
                            queue.retry(id, retry_at, "again");
                        }
                        1 => {
                            row.status = QueueStatus::Failed;
                            queue.finish(id, QueueStatus::Failed, Some(now), Some("no"));
                        }
                        _ => {
                            row.status = QueueStatus::Done;
                            queue.finish(id, QueueStatus::Done, Some(now), None);
                        }
                    }
                }
                85..=91 => {
                    let mut expected = 0;
                    for row in model.rows.values_mut() {
                        if row.status == QueueStatus::Claimed && row.lease_until.is_some_and(|l| l < now) {
                            row.status = QueueStatus::Pending;
                            row.lease_until = None;
                            expected += 1;
                        }
                    }
                    assert_eq!(queue.reclaim(now), expected, "seed {seed} step {step}: reclaim at {now}");
                }
                _ => {
                    model.rows.retain(|_, r| r.open());
                    queue.purge_finished(i64::MAX);
                }
            }
        }
        for (&id, row) in &model.rows {
            let got = queue.rows.get(id).expect("row kept");
            assert_eq!((got.status, got.attempts, got.lease_until), (row.status, row.attempts, row.lease_until));
        }
    }

    #[test]
    fn claims_match_a_full_scan() {
        for seed in 0..300 {
            run(seed * 7919 + 1, 400, 1 + (seed as usize % 6));
        }
    }
}
