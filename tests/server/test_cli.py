"""`omnisdk-server` administration commands, as an operator types them."""

from __future__ import annotations

from pathlib import Path

import pytest

from server_stub.cli import main
from server_stub.services import keys


@pytest.fixture
def database_args(tmp_path: Path) -> list[str]:
    return ["--database-url", f"sqlite:///{tmp_path / 'cli.sqlite3'}"]


def test_tenant_and_key_lifecycle(
    database_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", *database_args]) == 0
    assert "revision" in capsys.readouterr().out
    assert main(["tenant", "create", "Amy's Shoes", *database_args]) == 0
    tenant_id = capsys.readouterr().out.strip()
    assert tenant_id.startswith("ten_")

    assert main(["key", "create", "--tenant", tenant_id, "--channel", "pos", *database_args]) == 0
    out = capsys.readouterr()
    secret = out.out.strip()
    assert secret.startswith("osk_pos_")
    assert "only time" in out.err

    assert main(["key", "list", "--tenant", tenant_id, *database_args]) == 0
    listing = capsys.readouterr().out
    key_id = listing.split("\t")[0]
    assert "active" in listing
    parsed = keys.parse(secret)
    assert parsed is not None and parsed.key_id == key_id
    assert parsed.secret not in listing

    assert main(["key", "revoke", "--tenant", tenant_id, key_id, *database_args]) == 0
    capsys.readouterr()
    main(["key", "list", "--tenant", tenant_id, *database_args])
    assert "revoked" in capsys.readouterr().out


def test_key_for_unknown_tenant_is_a_clear_error(
    database_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["key", "create", "--tenant", "ten_nope", "--channel", "web", *database_args])
    assert code == 2
    assert "no tenant 'ten_nope'" in capsys.readouterr().err


def test_unknown_channel_is_refused_by_the_parser(database_args: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["key", "create", "--tenant", "t", "--channel", "kiosk", *database_args])
    assert exit_.value.code == 2


def test_scope_outside_the_channel_is_refused(
    database_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    main(["tenant", "create", "shop", *database_args])
    tenant_id = capsys.readouterr().out.strip()
    code = main(
        [
            "key",
            "create",
            "--tenant",
            tenant_id,
            "--channel",
            "web",
            "--scope",
            "returns:redeem",
            *database_args,
        ]
    )
    assert code == 2
    assert "cannot carry" in capsys.readouterr().err
