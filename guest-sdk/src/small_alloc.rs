//! The plugin's memory allocator: size classes with free lists for small
//! blocks, everything else passed to the standard one.
//!
//! Every call hands the plugin its request as separately allocated strings
//! (one allocation per header name and value, by the component model's
//! rules) and frees them when the call returns, so a plugin spends much of
//! a short call in `malloc` and `free`. Blocks of up to 256 bytes come from
//! five size classes (16 to 256 bytes); taking or returning one is a pop or
//! a push on that class's free list. Blocks are cut from 16 KiB slabs taken
//! from the standard allocator and are kept for reuse by the same class,
//! never returned: an instance's small-object memory is its peak small
//! allocation, and it is released with the instance.
//!
//! Plugins are single-threaded (`wasm32-wasip2` has no threads), which is
//! what lets the free lists go without locks. The SDK installs it as the
//! global allocator on that target with the default `small-alloc` feature.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::ptr;

/// The block sizes served from free lists: 16, 32, 64, 128 and 256 bytes.
const CLASSES: usize = 5;
/// The smallest class; a block must hold the free list's next pointer.
const SMALLEST: usize = 16;
/// The largest block served from a class.
const LARGEST: usize = SMALLEST << (CLASSES - 1);
/// Blocks are cut from slabs of this size.
const SLAB: usize = 16 * 1024;
/// Alignment every block gets (blocks are multiples of 16 from a 16-aligned slab).
const ALIGN: usize = 16;

/// Small blocks from size classes, the rest from `Backing`.
pub struct SmallObjects<Backing> {
    backing: Backing,
    state: UnsafeCell<FreeLists>,
}

/// The per-class free lists and the unused rest of the current slab.
struct FreeLists {
    /// Head of each class's list; a free block starts with the next one.
    heads: [*mut u8; CLASSES],
    /// Where the next fresh block is cut from, and the end of its slab.
    fresh: *mut u8,
    fresh_end: *mut u8,
}

/// The size class serving `layout`, if it is small.
fn class_of(layout: Layout) -> Option<usize> {
    if layout.size() > LARGEST || layout.align() > ALIGN {
        return None;
    }
    let block = layout.size().max(SMALLEST).next_power_of_two();
    Some((block.trailing_zeros() - SMALLEST.trailing_zeros()) as usize)
}

impl<Backing> SmallObjects<Backing> {
    /// An allocator serving small blocks itself and the rest from `backing`.
    pub const fn new(backing: Backing) -> Self {
        SmallObjects {
            backing,
            state: UnsafeCell::new(FreeLists {
                heads: [ptr::null_mut(); CLASSES],
                fresh: ptr::null_mut(),
                fresh_end: ptr::null_mut(),
            }),
        }
    }
}

impl<Backing: GlobalAlloc> SmallObjects<Backing> {
    /// A block of `class`: the head of its free list, or a fresh one.
    ///
    /// # Safety
    /// No other call into this allocator may be running.
    unsafe fn take(&self, class: usize) -> *mut u8 {
        // SAFETY: the caller guarantees exclusive access to the state.
        let lists = unsafe { &mut *self.state.get() };
        let head = lists.heads[class];
        if !head.is_null() {
            // SAFETY: a free block starts with the pointer to the next one.
            lists.heads[class] = unsafe { head.cast::<*mut u8>().read() };
            return head;
        }
        let size = SMALLEST << class;
        if (lists.fresh_end as usize) - (lists.fresh as usize) < size {
            // The rest of the old slab (less than 256 bytes) is left unused.
            // SAFETY: a valid, non-zero layout.
            let slab = unsafe {
                self.backing
                    .alloc(Layout::from_size_align_unchecked(SLAB, ALIGN))
            };
            if slab.is_null() {
                return slab;
            }
            lists.fresh = slab;
            // SAFETY: one past the end of the slab.
            lists.fresh_end = unsafe { slab.add(SLAB) };
        }
        let block = lists.fresh;
        // SAFETY: at least `size` bytes are left in the slab.
        lists.fresh = unsafe { block.add(size) };
        block
    }

    /// Puts `block` on the free list of `class`.
    ///
    /// # Safety
    /// `block` came from [`Self::take`] for `class` and is no longer used;
    /// no other call into this allocator may be running.
    unsafe fn give_back(&self, block: *mut u8, class: usize) {
        // SAFETY: the caller guarantees exclusive access to the state.
        let lists = unsafe { &mut *self.state.get() };
        // SAFETY: the block is at least 16 bytes, 16-aligned and unused.
        unsafe { block.cast::<*mut u8>().write(lists.heads[class]) };
        lists.heads[class] = block;
    }
}

// SAFETY: blocks are at least `layout.size()` bytes and aligned to 16 (or
// come from `backing` as they are); a block is handed out once until it is
// given back. Exclusive access to the free lists is the caller's to ensure:
// the only global instance lives in a single-threaded plugin.
unsafe impl<Backing: GlobalAlloc> GlobalAlloc for SmallObjects<Backing> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            // SAFETY: forwarded from our caller.
            Some(class) => unsafe { self.take(class) },
            // SAFETY: forwarded from our caller.
            None => unsafe { self.backing.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            Some(class) => {
                // SAFETY: forwarded from our caller.
                let block = unsafe { self.take(class) };
                if !block.is_null() {
                    // SAFETY: the block holds at least `layout.size()` bytes.
                    unsafe { block.write_bytes(0, layout.size()) };
                }
                block
            }
            // SAFETY: forwarded from our caller.
            None => unsafe { self.backing.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        match class_of(layout) {
            // SAFETY: the block was allocated with this layout, so by this class.
            Some(class) => unsafe { self.give_back(block, class) },
            // SAFETY: the block was allocated with this layout, so by `backing`.
            None => unsafe { self.backing.dealloc(block, layout) },
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` makes a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            // SAFETY: forwarded from our caller.
            (None, None) => unsafe { self.backing.realloc(block, layout, new_size) },
            (Some(old), Some(new)) if old == new => block,
            _ => {
                // SAFETY: forwarded from our caller.
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    // SAFETY: both blocks hold at least the smaller size and
                    // are distinct; the old block is not used afterwards.
                    unsafe {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                }
                moved
            }
        }
    }
}

// SAFETY: a plugin on `wasm32-wasip2` has a single thread, so calls into
// the allocator never overlap.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl<Backing: Sync> Sync for SmallObjects<Backing> {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::alloc::System;

    #[test]
    fn sizes_map_to_classes() {
        let class = |size, align| class_of(Layout::from_size_align(size, align).unwrap());
        assert_eq!(class(1, 1), Some(0));
        assert_eq!(class(16, 8), Some(0));
        assert_eq!(class(17, 1), Some(1));
        assert_eq!(class(100, 4), Some(3));
        assert_eq!(class(256, 16), Some(4));
        assert_eq!(class(257, 1), None);
        assert_eq!(class(8, 32), None);
    }

    #[test]
    fn freed_blocks_are_reused_by_their_class() {
        let allocator = SmallObjects::new(System);
        let layout = Layout::from_size_align(20, 1).unwrap();
        unsafe {
            let first = allocator.alloc(layout);
            let second = allocator.alloc(layout);
            assert_eq!(second as usize - first as usize, 32);
            allocator.dealloc(first, layout);
            assert_eq!(
                allocator.alloc(Layout::from_size_align(10, 1).unwrap()) as usize % 16,
                0
            );
            assert_eq!(allocator.alloc(layout), first);
        }
    }

    /// One step of an allocation workload.
    #[derive(Debug, Clone)]
    enum Step {
        Alloc {
            size: usize,
            align: usize,
            zeroed: bool,
        },
        Free(prop::sample::Index),
        Grow(prop::sample::Index, usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        let size = prop_oneof![1..=300usize, 1..=40usize, 200..=5000usize];
        let align = prop::sample::select(vec![1usize, 2, 4, 8, 16, 32]);
        prop_oneof![
            (size.clone(), align, any::<bool>()).prop_map(|(size, align, zeroed)| Step::Alloc {
                size,
                align,
                zeroed
            }),
            any::<prop::sample::Index>().prop_map(Step::Free),
            (any::<prop::sample::Index>(), size).prop_map(|(i, size)| Step::Grow(i, size)),
        ]
    }

    proptest! {
        /// Every live block keeps its own contents whatever else is
        /// allocated, freed or resized, and is aligned as asked.
        #[test]
        fn live_blocks_never_overlap(steps in proptest::collection::vec(step(), 1..400)) {
            let allocator = SmallObjects::new(System);
            // (block, layout, fill byte)
            let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
            let check = |live: &[(*mut u8, Layout, u8)]| {
                for &(block, layout, fill) in live {
                    let bytes = unsafe { std::slice::from_raw_parts(block, layout.size()) };
                    assert!(bytes.iter().all(|&b| b == fill), "a block was overwritten");
                    assert_eq!(block as usize % layout.align(), 0);
                }
            };
            for (n, step) in steps.into_iter().enumerate() {
                let fill = (n % 251) as u8 + 1;
                match step {
                    Step::Alloc { size, align, zeroed } => unsafe {
                        let layout = Layout::from_size_align(size, align).unwrap();
                        let block = if zeroed {
                            let block = allocator.alloc_zeroed(layout);
                            let bytes = std::slice::from_raw_parts(block, size);
                            prop_assert!(bytes.iter().all(|&b| b == 0));
                            block
                        } else {
                            allocator.alloc(layout)
                        };
                        prop_assert!(!block.is_null());
                        block.write_bytes(fill, size);
                        live.push((block, layout, fill));
                    },
                    Step::Free(index) if !live.is_empty() => unsafe {
                        let (block, layout, _) = live.swap_remove(index.index(live.len()));
                        allocator.dealloc(block, layout);
                    },
                    Step::Grow(index, new_size) if !live.is_empty() => unsafe {
                        let at = index.index(live.len());
                        let (block, layout, old_fill) = live[at];
                        let moved = allocator.realloc(block, layout, new_size);
                        prop_assert!(!moved.is_null());
                        let kept = std::slice::from_raw_parts(moved, layout.size().min(new_size));
                        prop_assert!(kept.iter().all(|&b| b == old_fill));
                        moved.write_bytes(fill, new_size);
                        let new_layout = Layout::from_size_align(new_size, layout.align()).unwrap();
                        live[at] = (moved, new_layout, fill);
                    },
                    _ => {}
                }
                check(&live);
            }
            for (block, layout, _) in live {
                unsafe { allocator.dealloc(block, layout) };
            }
            // Slabs are never returned (by design), so the test leaks them.
        }
    }
}
