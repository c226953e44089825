//! A least-recently-used order over the entries of a [`Slab`]: pure, for the bounded tables
//! that evict their oldest entry (UDP flows, per-source limits).
//!
//! The list is intrusive: each entry carries its own [`Links`] and the list keeps only its two
//! ends, so linking an entry allocates nothing and touching, unlinking or finding the oldest
//! entry is O(1). The slab owns the entries; the list only reads and rewrites their links, so a
//! table may keep some entries out of the list (a source with live connections is never
//! evicted). It owns no file descriptors and makes no syscalls.

use slab::Slab;

/// No entry: the end of the list, or the links of an entry that is not in it.
const NIL: usize = usize::MAX;

/// An entry's place in an [`LruOrder`]; embed one in each entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Links {
    prev: usize,
    next: usize,
}

impl Links {
    /// Not in any list: what a new entry starts with.
    pub(crate) const UNLINKED: Links = Links {
        prev: NIL,
        next: NIL,
    };
}

/// An entry that can be kept in an [`LruOrder`].
pub(crate) trait Linked {
    fn links(&self) -> &Links;
    fn links_mut(&mut self) -> &mut Links;
}

/// Slab ids from least to most recently used. The ids are only valid with the slab given to
/// every call: one order serves one slab.
#[derive(Debug)]
pub(crate) struct LruOrder {
    head: usize,
    tail: usize,
}

impl Default for LruOrder {
    fn default() -> Self {
        Self {
            head: NIL,
            tail: NIL,
        }
    }
}

impl LruOrder {
    /// The least recently used entry.
    pub(crate) fn front(&self) -> Option<usize> {
        (self.head != NIL).then_some(self.head)
    }

    pub(crate) fn contains<E: Linked>(&self, entries: &Slab<E>, id: usize) -> bool {
        // A lone entry has no neighbours, so its links alone cannot tell it is in the list.
        entries.get(id).is_some_and(|e| {
            let links = e.links();
            links.prev != NIL || links.next != NIL || self.head == id
        })
    }

    /// Makes `id` the most recently used, moving it to the back if it was already in the list.
    /// An id the slab does not hold is ignored.
    pub(crate) fn push_back<E: Linked>(&mut self, entries: &mut Slab<E>, id: usize) {
        self.unlink(entries, id);
        let tail = self.tail;
        let Some(e) = entries.get_mut(id) else {
            return;
        };
        *e.links_mut() = Links {
            prev: tail,
            next: NIL,
        };
        match entries.get_mut(tail) {
            Some(t) => t.links_mut().next = id,
            None => self.head = id,
        }
        self.tail = id;
    }

    /// Takes `id` out of the list; it stays in the slab. An entry not in the list is left as it
    /// is: unlinking it blindly would see no neighbours and empty the list.
    pub(crate) fn unlink<E: Linked>(&mut self, entries: &mut Slab<E>, id: usize) {
        if !self.contains(entries, id) {
            return;
        }
        let Some(Links { prev, next }) = entries.get(id).map(|e| *e.links()) else {
            return;
        };
        match entries.get_mut(prev) {
            Some(p) => p.links_mut().next = next,
            None => self.head = next,
        }
        match entries.get_mut(next) {
            Some(n) => n.links_mut().prev = prev,
            None => self.tail = prev,
        }
        if let Some(e) = entries.get_mut(id) {
            *e.links_mut() = Links::UNLINKED;
        }
    }

    /// The ids front to back, checking that every link agrees with its neighbour's and that
    /// the walk ends at the tail: for tests of the tables built on this list.
    #[cfg(test)]
    pub(crate) fn ids<E: Linked>(&self, entries: &Slab<E>) -> Vec<usize> {
        let mut ids = Vec::new();
        let mut prev = NIL;
        let mut at = self.head;
        while at != NIL {
            let links = entries.get(at).map(|e| *e.links());
            let Some(links) = links else {
                panic!("the list holds {at}, which the slab does not");
            };
            assert_eq!(links.prev, prev, "prev link of {at}");
            assert!(ids.len() < entries.len(), "the list loops");
            ids.push(at);
            prev = at;
            at = links.next;
        }
        assert_eq!(self.tail, prev, "tail");
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Item(Links);

    impl Linked for Item {
        fn links(&self) -> &Links {
            &self.0
        }
        fn links_mut(&mut self) -> &mut Links {
            &mut self.0
        }
    }

    /// A slab of `n` entries, all pushed in id order.
    fn filled(n: usize) -> (Slab<Item>, LruOrder) {
        let mut entries = Slab::new();
        let mut order = LruOrder::default();
        for _ in 0..n {
            let id = entries.insert(Item(Links::UNLINKED));
            order.push_back(&mut entries, id);
        }
        (entries, order)
    }

    #[test]
    fn keeps_push_order_and_moves_a_pushed_entry_to_the_back() {
        let (mut entries, mut order) = filled(3);
        assert_eq!(order.ids(&entries), [0, 1, 2]);
        assert_eq!(order.front(), Some(0));
        order.push_back(&mut entries, 0);
        assert_eq!(order.ids(&entries), [1, 2, 0]);
        order.push_back(&mut entries, 0);
        assert_eq!(order.ids(&entries), [1, 2, 0]);
        assert_eq!(order.front(), Some(1));
    }

    #[test]
    fn unlinks_head_middle_and_tail() {
        for (gone, left) in [(0, [1, 2]), (1, [0, 2]), (2, [0, 1])] {
            let (mut entries, mut order) = filled(3);
            order.unlink(&mut entries, gone);
            assert_eq!(order.ids(&entries), left, "unlinking {gone}");
            assert!(!order.contains(&entries, gone));
            assert_eq!(entries[gone].0, Links::UNLINKED);
            order.push_back(&mut entries, gone);
            assert_eq!(order.ids(&entries)[2], gone);
        }
    }

    #[test]
    fn unlinking_the_last_entry_empties_the_list() {
        let (mut entries, mut order) = filled(1);
        assert!(order.contains(&entries, 0));
        order.unlink(&mut entries, 0);
        assert_eq!(order.front(), None);
        assert!(order.ids(&entries).is_empty());
        order.push_back(&mut entries, 0);
        assert_eq!(order.ids(&entries), [0]);
    }

    #[test]
    fn unlinking_an_entry_not_in_the_list_changes_nothing() {
        let (mut entries, mut order) = filled(2);
        let outside = entries.insert(Item(Links::UNLINKED));
        order.unlink(&mut entries, outside);
        order.unlink(&mut entries, 0);
        order.unlink(&mut entries, 0);
        order.unlink(&mut entries, 99);
        assert_eq!(order.ids(&entries), [1]);
        assert!(!order.contains(&entries, outside));
        assert!(!order.contains(&entries, 99));
    }

    #[test]
    fn ignores_ids_the_slab_does_not_hold() {
        let (mut entries, mut order) = filled(2);
        order.push_back(&mut entries, 99);
        assert_eq!(order.ids(&entries), [0, 1]);
        let mut empty: Slab<Item> = Slab::new();
        let mut none = LruOrder::default();
        none.push_back(&mut empty, 0);
        assert_eq!(none.front(), None);
    }
}
