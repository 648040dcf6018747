"""The iptables seam: iptables-save -> diff -> one iptables-restore --noflush per apply.

`IptablesBase` holds the save/diff/restore logic; `Iptables` runs the real tools (through
podnet.execs, optionally inside a netns) and `podnet.xtables.fake.FakeIptables` keeps the tables
in memory.  Both expose the same `save`, `restore`, `apply`, `plan` and `converged`.
"""

from __future__ import annotations

from collections.abc import Iterable

from podnet import execs
from podnet.errors import ExecError, PodnetError
from podnet.xtables.ruleset import Owner, Ruleset, diff, parse_save


class NotConverged(PodnetError):
    """After an apply the kernel still differs from the desired ruleset (neutron's debug
    check): usually a rule not written in iptables-save's canonical form."""

    def __init__(self, leftover: str) -> None:
        super().__init__(f"iptables rules did not converge; second diff:\n{leftover}")
        self.leftover = leftover


class IptablesBase:
    """save/restore are the seam; everything else is shared by the real runner and the fake."""

    ip_version: int = 4
    check_converged: bool = False

    def save(self, table: str) -> str:
        raise NotImplementedError

    def restore(self, payload: str, noflush: bool = True) -> None:
        raise NotImplementedError

    def read(self, tables: Iterable[str]) -> Ruleset:
        """The current state of `tables`, parsed from one save per table."""
        actual = Ruleset(ip_version=self.ip_version)
        for table in tables:
            parsed = parse_save(self.save(table), self.ip_version)
            if table in parsed.tables:
                actual.tables[table] = parsed.tables[table]
        return actual

    def plan(self, desired: Ruleset, owner: Owner) -> str:
        """The payload `apply` would write now ("" when the kernel already matches)."""
        if desired.ip_version != self.ip_version:
            raise PodnetError(f"IPv{desired.ip_version} ruleset given to an IPv{self.ip_version} runner")
        return diff(desired, self.read(desired.tables), owner)

    def apply(self, desired: Ruleset, owner: Owner) -> str:
        """Make what `owner` owns in the tables of `desired` match it, in one restore batch.

        Tables listed in `desired` but empty get all their owned chains and jumps removed.
        Returns the payload written ("" when nothing changed, in which case nothing is run).
        """
        payload = self.plan(desired, owner)
        if payload:
            self.restore(payload, noflush=True)
            if self.check_converged:
                leftover = self.plan(desired, owner)
                if leftover:
                    raise NotConverged(leftover)
        return payload

    def converged(self, desired: Ruleset, owner: Owner) -> bool:
        return not self.plan(desired, owner)


class Iptables(IptablesBase):
    """The real iptables-save/iptables-restore (ip6tables-* for ip_version=6).

    `wait` and `wait_interval_us` go to iptables-restore as `-w`/`-W`: with the legacy backend
    a concurrent iptables holds /run/xtables.lock and restore would otherwise fail at once
    (k8s#57428; kube-proxy uses -w 5 -W 100000).  iptables-nft accepts and ignores them.
    """

    def __init__(
        self,
        ip_version: int = 4,
        netns: str | None = None,
        *,
        wait: int = 5,
        wait_interval_us: int = 100_000,
        check_converged: bool = False,
        timeout: float = 60.0,
    ) -> None:
        if ip_version not in (4, 6):
            raise ValueError(f"ip_version must be 4 or 6, not {ip_version}")
        self.ip_version = ip_version
        self.netns = netns
        self.wait = wait
        self.wait_interval_us = wait_interval_us
        self.check_converged = check_converged
        self.timeout = timeout
        self._prog = "iptables" if ip_version == 4 else "ip6tables"

    def save(self, table: str) -> str:
        try:
            return execs.run([f"{self._prog}-save", "-t", table], netns=self.netns,
                             timeout=self.timeout).stdout
        except ExecError as exc:
            # The legacy backend reports a table nobody has used yet as missing; for a diff
            # that is the same as an empty table (the restore creates it).
            if "does not exist" in exc.stderr:
                return ""
            raise

    def restore(self, payload: str, noflush: bool = True) -> None:
        argv = [f"{self._prog}-restore", "-w", str(self.wait), "-W", str(self.wait_interval_us)]
        if noflush:
            argv.append("--noflush")
        execs.run(argv, input=payload, netns=self.netns, timeout=self.timeout)
