//! Undo steps for multi-step operations: a failure anywhere unwinds what was made, in
//! reverse order, so no half-made replica or source stays behind.

use crate::error::Result;

type UndoStep<'a> = Box<dyn FnOnce() -> Result<()> + 'a>;

pub struct Undo<'a> {
    steps: Vec<(String, UndoStep<'a>)>,
}

impl<'a> Undo<'a> {
    pub fn new() -> Self {
        Undo { steps: Vec::new() }
    }
    /// Registers how to undo the step just done.
    pub fn push(&mut self, what: impl Into<String>, f: impl FnOnce() -> Result<()> + 'a) {
        self.steps.push((what.into(), Box::new(f)));
    }
    /// Success: keep everything.
    pub fn commit(mut self) {
        self.steps.clear();
    }
}

impl Default for Undo<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        while let Some((what, f)) = self.steps.pop() {
            if let Err(e) = f() {
                let e = e.chain();
                tracing::error!(step = %what, error = %e, "undo failed; clean up by hand");
                {
                    use std::io::Write as _;
                    let _ = writeln!(std::io::stderr(), "dbfork: could not undo {what}: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn unwinds_in_reverse_unless_committed() {
        let log = RefCell::new(Vec::new());
        {
            let mut u = Undo::new();
            for i in 0..3 {
                let l = &log;
                u.push(format!("step {i}"), move || {
                    l.borrow_mut().push(i);
                    Ok(())
                });
            }
        }
        assert_eq!(*log.borrow(), vec![2, 1, 0]);
        let mut u = Undo::new();
        u.push("kept", || {
            log.borrow_mut().push(9);
            Ok(())
        });
        u.commit();
        assert_eq!(log.borrow().len(), 3);
    }
}
