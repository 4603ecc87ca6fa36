"""`Check`: one line of `atomplug doctor`, what was checked, whether it is fine and how to fix it.

Every engine's doctor checks return lists of these; the `atomplug doctor` command prints them.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{'ok  ' if self.ok else 'FAIL'}  {self.name:<22} {self.detail}"
        if not self.ok and self.fix:
            text += f"\n      fix: {self.fix}"
        return text
