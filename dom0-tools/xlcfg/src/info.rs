//! What `xl info` prints about the hypervisor that dbfork needs: its command line and
//! the boot options on it (grant-table limits, docs/xen.md).

/// The hypervisor's command line from `xl info`'s output (`xen_commandline : ...`).
pub fn xen_commandline(xl_info: &str) -> Option<&str> {
    xl_info.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "xen_commandline").then_some(v.trim())
    })
}

/// The value of boot option `name` (`name=value`) on a Xen command line. Xen reads
/// its options left to right, so the last one counts.
pub fn boot_option<'a>(cmdline: &'a str, name: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .rev()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_and_its_last_option() {
        let info = "host                   : dom0\nxen_commandline        : placeholder gnttab_max_frames=64 dom0_mem=1G gnttab_max_frames=128\nxen_major : 4\n";
        let c = xen_commandline(info).unwrap();
        assert!(c.starts_with("placeholder"), "{c}");
        assert_eq!(boot_option(c, "gnttab_max_frames"), Some("128"));
        assert_eq!(boot_option(c, "dom0_mem"), Some("1G"));
        assert_eq!(
            boot_option(c, "gnttab_max"),
            None,
            "a prefix is not the option"
        );
        assert_eq!(boot_option(c, "gnttab_max_maptrack_frames"), None);
        assert_eq!(xen_commandline("host : x\n"), None);
    }
}
