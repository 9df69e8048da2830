"""README's links to files: each names a file inside the repository, which a user has."""

from __future__ import annotations

import re

from tests.project import REPO

#: [text](target) where the target is not a URL or an anchor on the same page.
LOCAL_LINK = re.compile(r"\[[^\]]*\]\((?!https?://|#)([^)#\s]+)")


def test_every_local_link_of_the_readme_is_a_file_of_the_repository():
    targets = LOCAL_LINK.findall((REPO / "README.md").read_text())
    assert "docs/DESIGN.md" in targets
    for target in targets:
        path = (REPO / target).resolve()
        assert path.is_relative_to(REPO), f"README links outside the repository: {target}"
        assert path.exists(), f"README links to a missing file: {target}"
