from __future__ import annotations

import pytest

from omnisdk.core.channels import DEFAULT_SCOPES, Channel, Scope, scopes_for


def test_only_tills_redeem_returns() -> None:
    assert Scope.RETURNS_REDEEM in DEFAULT_SCOPES[Channel.POS]
    assert Scope.RETURNS_REDEEM not in DEFAULT_SCOPES[Channel.WEB]
    assert Scope.RETURNS_REDEEM not in DEFAULT_SCOPES[Channel.APP]


def test_only_admin_keys_manage_keys_author_content_export_or_erase() -> None:
    admin_only = {Scope.KEYS_MANAGE, Scope.CONTENT_WRITE, Scope.PRIVACY_EXPORT, Scope.PRIVACY_ERASE}
    for channel in (Channel.WEB, Channel.APP, Channel.POS):
        assert not admin_only & DEFAULT_SCOPES[channel]
    assert admin_only <= DEFAULT_SCOPES[Channel.ADMIN]


def test_a_key_may_carry_a_subset_of_its_channels_scopes() -> None:
    assert scopes_for(Channel.WEB, frozenset({Scope.SYSTEM_READ})) == {Scope.SYSTEM_READ}
    assert scopes_for(Channel.POS) == DEFAULT_SCOPES[Channel.POS]


def test_a_key_may_not_carry_scopes_beyond_its_channel() -> None:
    with pytest.raises(ValueError, match="returns:redeem"):
        scopes_for(Channel.WEB, frozenset({Scope.RETURNS_REDEEM}))
