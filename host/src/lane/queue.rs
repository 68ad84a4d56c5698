//! A lane's own queue: the jobs it has read and not started, one line per
//! plugin, served in turn across plugins. A plugin flooded with requests
//! delays the requests of others on the same lane by one call at most,
//! not by its whole backlog.

use std::collections::VecDeque;

use crate::executor::scheduler::Scheduled;

/// The most jobs a spare line keeps room for; a line grown past it by a
/// burst is freed when it runs out.
const SPARE_LINE_CAPACITY: usize = 256;

/// The jobs a lane has read, by plugin, in turn order.
pub struct LaneQueue<J> {
    /// One line per plugin with a job waiting; the front one goes next.
    lines: VecDeque<VecDeque<J>>,
    /// Lines that ran out, kept with their capacity for the next plugin
    /// that queues: a line is emptied and refilled on every batch, and
    /// growing a new one job by job would copy the jobs again each time.
    spare: Vec<VecDeque<J>>,
}

impl<J> Default for LaneQueue<J> {
    fn default() -> Self {
        LaneQueue {
            lines: VecDeque::new(),
            spare: Vec::new(),
        }
    }
}

impl<J: Scheduled> LaneQueue<J> {
    /// Queue `job` behind the other jobs of its plugin.
    pub fn push(&mut self, job: J) {
        let name = job.plugin_name();
        match self
            .lines
            .iter_mut()
            .find(|line| line[0].plugin_name() == name)
        {
            Some(line) => line.push_back(job),
            None => {
                let mut line = self.spare.pop().unwrap_or_default();
                line.push_back(job);
                self.lines.push_back(line);
            }
        }
    }

    /// Whether no job waits.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The next job: the oldest of the plugin whose turn it is, which then
    /// goes to the back of the turn order.
    pub fn pop(&mut self) -> Option<J> {
        let mut line = self.lines.pop_front()?;
        let job = line.pop_front()?;
        if line.is_empty() {
            if line.capacity() <= SPARE_LINE_CAPACITY {
                self.spare.push(line);
            }
        } else {
            self.lines.push_back(line);
        }
        Some(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TestJob(&'static str, u32);

    impl Scheduled for TestJob {
        fn plugin_name(&self) -> &str {
            self.0
        }
        fn max_concurrency(&self) -> usize {
            0
        }
    }

    #[test]
    fn plugins_take_turns_whatever_their_backlog() {
        let mut queue = LaneQueue::default();
        for id in 0..4 {
            queue.push(TestJob("flooded", id));
        }
        queue.push(TestJob("quiet", 0));
        queue.push(TestJob("other", 0));
        queue.push(TestJob("quiet", 1));
        let order: Vec<(&str, u32)> = std::iter::from_fn(|| queue.pop())
            .map(|job| (job.0, job.1))
            .collect();
        assert_eq!(
            order,
            [
                ("flooded", 0),
                ("quiet", 0),
                ("other", 0),
                ("flooded", 1),
                ("quiet", 1),
                ("flooded", 2),
                ("flooded", 3),
            ]
        );
    }

    #[test]
    fn lines_that_ran_out_are_reused_and_a_burst_is_not_kept() {
        let mut queue = LaneQueue::default();
        for round in 0..3 {
            for id in 0..8 {
                queue.push(TestJob("a", id));
            }
            queue.push(TestJob("b", round));
            while queue.pop().is_some() {}
            assert_eq!(queue.spare.len(), 2, "round {round}");
        }
        for id in 0..=SPARE_LINE_CAPACITY as u32 {
            queue.push(TestJob("a", id));
        }
        while queue.pop().is_some() {}
        assert_eq!(
            queue.spare.len(),
            1,
            "the line grown past the bound is freed"
        );
    }

    #[test]
    fn a_plugin_that_ran_out_queues_at_the_back_when_it_returns() {
        let mut queue = LaneQueue::default();
        queue.push(TestJob("a", 0));
        queue.push(TestJob("b", 0));
        assert_eq!(queue.pop().map(|j| j.0), Some("a"));
        queue.push(TestJob("a", 1));
        assert_eq!(queue.pop().map(|j| j.0), Some("b"));
        assert_eq!(queue.pop().map(|j| (j.0, j.1)), Some(("a", 1)));
        assert!(queue.pop().is_none());
    }
}
