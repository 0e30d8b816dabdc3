# shellcheck shell=sh
# The lab's grant check, sourced by init-dom0.sh (its pass/fail/oneline) in dom0 after
# the fork run. A domU (grant-probe.cfg, guest/grant-init.sh) loads dbfork_gnt and
# grants pool frames read-only to dom0; dbfork-grant-probe map maps them through
# gntdev with the agent's replica code and prints one CHECK line per check (the
# bytes, revokes refused while mapped, unsharing on a write and before a read,
# teardown in both orders, a mapper killed with its mappings). Then the domU must be
# gone with only Domain-0 left.

GRANT_CHECKS="grant-refs-published grant-mapped-verified grant-revoke-refused-while-mapped grant-write-and-read-unshare grant-unshared-frames-let-go grant-replica-unmaps-then-source-ends grant-mapper-killed-leaks-none grant-pagetable-shared grant-source-closes-first"
modprobe xen-gntdev 2>/dev/null
t=$(now)
if xl create /var/lib/xen-lab/grant-probe.cfg >/tmp/gc.out 2>&1 && GDOM=$(xl domid labgrant 2>/dev/null); then
    dbfork-grant-probe map --from "$GDOM" >/tmp/gp.out 2>/tmp/gp.err
    for c in $GRANT_CHECKS; do
        line=$(grep "^CHECK [a-z]* $c " /tmp/gp.out | head -n 1)
        case "$line" in
        "CHECK ok $c "*) pass "$c"; echo "  ${line#CHECK ok "$c" }" ;;
        "CHECK fail $c "*) fail "$c" "$(echo "${line#CHECK fail "$c" }" | cut -c1-300)" ;;
        *) fail "$c" "not reported: $(oneline /tmp/gp.err) $(xenstore-read "/local/domain/$GDOM/data/grant-probe/failed" 2>/dev/null)" ;;
        esac
    done
    grep -q "^CHECK fail" /tmp/gp.out && dump_domain labgrant
    echo "  the grant check took $(since "$t") s"
else
    for c in $GRANT_CHECKS; do fail "$c" "xl create of the grant domU: $(oneline /tmp/gc.out)"; done
fi
# Waited for as a whole: a halted domU leaves `xl list` by name before Xen has
# released it (a nameless dying domain stays listed a moment; one CI run saw it).
only_dom0() { [ "$(xl list | awk 'NR > 1 {print $1}' | tr '\n' ' ')" = "Domain-0 " ]; }
i=0
while ! only_dom0 && [ "$i" -lt 60 ]; do sleep 1; i=$((i + 1)); done
if only_dom0; then
    pass grant-domu-gone
else
    fail grant-domu-gone "domains: $(xl list | awk 'NR > 1 {print $1}' | tr '\n' ' ') console: $(tail -n 5 /var/log/xen/console/guest-labgrant.log 2>/dev/null | tr -d '\r' | tr '\n' '|' | cut -c1-300)"
    xl destroy labgrant 2>/dev/null
fi
