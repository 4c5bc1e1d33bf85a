"""Every sentence the console shows that is not in a template, in one place (English)."""

from __future__ import annotations

SIGN_IN_REFUSED = "That key is not a console key of this server (mistyped, revoked, or a shop key)."
SIGNED_OUT = "You are signed out."
NOT_FOUND = "No customer matches that {kind}."
BAD_IDENTIFIER = "That is not a valid {kind}: {reason}."
NOTE_ADDED = "Note added."
NOTE_EDITED = "Note saved (revision {revision})."
NOTE_DELETED = "Note deleted: {reason}"
NOTE_FORBIDDEN = "You may not change this note. {detail}"
PREFERENCE_SAVED = "Preferred channel recorded: {channel}."
PREFERENCE_CLEARED = "Declared preference withdrawn."
RETURN_CODE_QUEUED = (
    "The return code of order {order} will be sent to her again, on her preferred channel "
    "if her consent allows it (see her timeline)."
)
RETURN_CODE_ALREADY = "The return code of order {order} was asked for a moment ago: sent once."
SPLIT_DONE = "Merge undone: {loser} is a customer of her own again."
SPLIT_REFUSED = "Only an admin may undo a merge."
EXPIRED = "Your session ended; sign in again."
BAD_FORM = "The form was out of date; try again."

SEARCH_KINDS = {
    "email": "e-mail address",
    "phone": "phone number",
    "loyalty_card": "loyalty id",
    "order": "order reference",
    "return_code": "return code",
}
KIND_LABELS = {
    "note": "Note",
    "warning": "Warning",
    "preference": "Preference",
    "promise": "Promise",
}
VISIBILITY_LABELS = {
    "department": "My department only",
    "staff": "All staff",
    "customer": "All staff and the customer",
}
