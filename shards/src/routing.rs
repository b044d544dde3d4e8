//! Routing a command to its group's leader: a pure decision, shared by the
//! node's gateway and the simulator's clients.
//!
//! A route starts at the preferred node (a cached leader hint, or the local
//! replica) and then walks the candidate replicas. It moves on only after an
//! answer that proves the command was NOT executed where it was sent — a
//! NotLeader answer, or a request that never left. An answer of unknown fate
//! (timeout, lost connection) must end the route: re-sending could turn one
//! client request into two commands.

/// What to do after a redirecting answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Send to the (new) target at once.
    Now,
    /// Every candidate was tried or no leader is known yet: pause, then send.
    Backoff,
}

#[derive(Debug, Clone)]
pub struct Route<N> {
    candidates: Vec<N>,
    next: usize,
    target: N,
}

impl<N: Clone + PartialEq> Route<N> {
    /// `candidates` in routing order; `preferred` (if any) is tried first.
    /// `None` when there is nowhere to send.
    pub fn new(mut candidates: Vec<N>, preferred: Option<N>) -> Option<Self> {
        if let Some(p) = preferred {
            candidates.retain(|c| *c != p);
            candidates.insert(0, p);
        }
        let target = candidates.first()?.clone();
        Some(Route {
            candidates,
            next: 0,
            target,
        })
    }

    pub fn target(&self) -> &N {
        &self.target
    }

    /// The target answered NotLeader (with the leader it knows, if any), or
    /// the request never reached it (`leader = None`).
    pub fn redirect(&mut self, leader: Option<N>) -> Step {
        match leader {
            Some(l) if l != self.target => {
                self.target = l;
                Step::Now
            }
            // It names itself but refused: an election is settling.
            Some(_) => Step::Backoff,
            None => {
                self.next = (self.next + 1) % self.candidates.len();
                self.target = self.candidates[self.next].clone();
                if self.next == 0 {
                    Step::Backoff
                } else {
                    Step::Now
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_hints_and_walks_candidates() {
        let mut r = Route::new(vec![1, 2, 3], Some(2)).unwrap();
        assert_eq!(*r.target(), 2);
        assert_eq!(r.redirect(Some(3)), Step::Now);
        assert_eq!(*r.target(), 3);
        assert_eq!(r.redirect(Some(3)), Step::Backoff);
        assert_eq!(*r.target(), 3);
        // No hint: walk the candidates in order, pausing after a full round.
        let mut r = Route::new(vec![1, 2, 3], None).unwrap();
        assert_eq!(r.redirect(None), Step::Now);
        assert_eq!(*r.target(), 2);
        assert_eq!(r.redirect(None), Step::Now);
        assert_eq!(r.redirect(None), Step::Backoff);
        assert_eq!(*r.target(), 1);
        assert!(Route::<u8>::new(vec![], None).is_none());
    }
}
