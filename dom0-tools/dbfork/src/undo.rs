//! Undo steps for multi-step operations: a failure anywhere unwinds what was made, in
//! reverse order, so no half-made replica or source stays behind.

type UndoStep = Box<dyn FnOnce() -> anyhow::Result<()>>;

pub struct Undo {
    steps: Vec<(String, UndoStep)>,
}

impl Undo {
    pub fn new() -> Self {
        Undo { steps: Vec::new() }
    }
    /// Registers how to undo the step just done.
    pub fn push(
        &mut self,
        what: impl Into<String>,
        f: impl FnOnce() -> anyhow::Result<()> + 'static,
    ) {
        self.steps.push((what.into(), Box::new(f)));
    }
    /// Success: keep everything.
    pub fn commit(mut self) {
        self.steps.clear();
    }
}

impl Default for Undo {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        while let Some((what, f)) = self.steps.pop() {
            if let Err(e) = f() {
                tracing::error!(step = %what, error = %format!("{e:#}"), "undo failed; clean up by hand");
                eprintln!("dbfork: could not undo {what}: {e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    #[test]
    fn unwinds_in_reverse_unless_committed() {
        let log = Rc::new(RefCell::new(Vec::new()));
        {
            let mut u = Undo::new();
            for i in 0..3 {
                let l = log.clone();
                u.push(format!("step {i}"), move || {
                    l.borrow_mut().push(i);
                    Ok(())
                });
            }
        }
        assert_eq!(*log.borrow(), vec![2, 1, 0]);
        let l = log.clone();
        let mut u = Undo::new();
        u.push("kept", move || {
            l.borrow_mut().push(9);
            Ok(())
        });
        u.commit();
        assert_eq!(log.borrow().len(), 3);
    }
}
