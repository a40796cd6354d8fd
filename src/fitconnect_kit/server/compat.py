"""[U] choices of the Zustelldienst that are not in ``protocol/`` (see ``docs/server.md``).

Everything here is a best guess where the reference marks a fact unconfirmed; change it here.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final

from fitconnect_kit.protocol.api import (
    EVENT_LOG_PAGE_DEFAULT,
    EVENT_LOG_PAGE_MAX,
    SUBMISSION_LIST_PAGE_DEFAULT,
    SUBMISSION_LIST_PAGE_MAX,
)

#: Submission API version reported by ``GET /v1/info`` and the OpenAPI document. [U] We implement
#: the v1 resource model with per-service reply channels (a 1.3.0 feature), hence 1.3.0.
SUBMISSION_API_VERSION: Final = (1, 3, 0)

#: ``GET /v1/info`` shape: ``{"version": {major, minor, patch}}`` as the routing API's ``/info``;
#: we add ``implementation`` ({name, version}) — clients must tolerate extra members. [U]
INFO_IMPLEMENTATION_NAME: Final = "fitconnect-kit"

#: Path of the ZD's JWKS (SET verification keys), relative to the server root. [S]/[U] for v1.
JWKS_PATH: Final = "/.well-known/jwks.json"

#: Token endpoint path on our server; FITKO runs it on a separate host (``…/token``). [S]
TOKEN_PATH: Final = "/token"  # noqa: S105 - a path

#: How long clients may cache the JWKS (seconds). [U]
JWKS_MAX_AGE: Final = 300

# --- callbacks (event-log / outbox / deadline owner) ----------------------------------------------
# The reference leaves the retry schedule open (§9.1 "retried until a 2xx is received", §14 #9).

#: Default of ``callbacks.backoff_factor``: delay n = initial_backoff · factor^(n-1), capped at
#: ``max_backoff`` (defaults 5 s … 1 h: 5, 10, 20, …, 2560 s, then hourly). [U]
CALLBACK_BACKOFF_FACTOR: Final = 2.0

#: Each delay is shortened by a random fraction of up to this much ("equal jitter" downwards),
#: so nodes do not retry in lockstep and a delay never exceeds ``max_backoff``. With ≤ 0.5 every
#: delay is still longer than the one before (until the cap). [U]
CALLBACK_BACKOFF_JITTER: Final = 0.2

#: Default of ``callbacks.give_up_after``: a callback that got no 2xx within this time after it
#: was enqueued is marked ``failed`` (so is one that reached ``callbacks.max_attempts``, default
#: 100 — with the default schedule the 3 days come first, after ~80 attempts). [U]
CALLBACK_GIVE_UP_AFTER: Final = timedelta(days=3)

#: Default of ``callbacks.max_concurrency``: requests one node sends at the same time. [U]
CALLBACK_MAX_CONCURRENCY: Final = 10

#: Delivered and failed outbox rows are removed after this long (the deadlines worker). [U]
CALLBACK_DELIVERY_RETENTION: Final = timedelta(days=30)

#: 3xx answers are failures: redirects are not followed (a redirect could leave HTTPS). [U]
#: Proxies from the environment (``HTTPS_PROXY``…) are not used for callbacks. [U]
CALLBACK_USER_AGENT: Final = "fitconnect-kit-zustelldienst"

# --- deadlines ----------------------------------------------------------------------------------

#: Problem of the ZD's day-14 ``reject-submission``: ``protocol.problems.RejectProblems.
#: SUBMISSION_EXPIRED`` (``…/events/problems/submission-expired``, instance ``submission``),
#: with the ``authenticationTags`` of the ZD's own ``submit-submission``. [U] name and title.
DEADLINE_REJECT_PROBLEM_NAME: Final = "submission-expired"

#: Incomplete submissions deleted after ``deadlines.incomplete_submission`` get NEW_EVENTS to the
#: sender only: the destination never heard of them (NEW_SUBMISSIONS comes with submit), although
#: the reference's emulator summary says "callbacks to both". Deletions of submitted submissions
#: (day 21, 7 days after pickup) and the day-14 reject go to sender and destination. [U]
INCOMPLETE_DELETION_NOTIFIES_DESTINATION: Final = False

#: ``delete-submission`` of a submission without a decision (deleted 7 days after pickup while
#: neither accepted nor rejected) sets its status to ``deleted`` — what ``protocol.events.
#: derive_state`` makes of such a log; later accept/reject SETs are refused. [U]
UNDECIDED_DELETION_STATUS: Final = "deleted"

#: "Undelivered" for the day-3/day-9 operator reminders means: status ``submitted`` and never
#: fetched by the subscriber (``first_fetched_at`` unset). The real ZD e-mails the destination's
#: operator; we log one structured line per reminder (``reminders_sent`` counts them). [U]
REMINDER_LOGGER: Final = "fitconnect_kit.server.deadlines"

# ``delete-submission`` issued by the ZD carries an empty payload ``{}``. [U]

# --- Submission API v1 endpoints (api/submissions.py, api/events.py, api/destinations.py) -------

#: ``PUT /v1/submissions/{submissionId}`` answers 202 Accepted with ``{destinationId,
#: submissionId, caseId}`` (v1 docs say 202; the v2 test environment answers 200). [U]
SUBMIT_STATUS_CODE: Final = 202

#: Default ``limit`` of ``GET /v1/cases/{caseId}/events`` and ``…/submissions/{id}/events``
#: (the maximum, 500, is [C]). [U]
EVENT_LOG_DEFAULT_LIMIT: Final = EVENT_LOG_PAGE_DEFAULT
EVENT_LOG_MAX_LIMIT: Final = EVENT_LOG_PAGE_MAX  # [C]

#: ``GET /v1/submissions``: default and maximum ``limit`` (routing API values). [U]
SUBMISSION_LIST_DEFAULT_LIMIT: Final = SUBMISSION_LIST_PAGE_DEFAULT
SUBMISSION_LIST_MAX_LIMIT: Final = SUBMISSION_LIST_PAGE_MAX

#: Largest ``offset`` of every paged list (a 32-bit count); larger values are 400
#: ``malformed-request`` instead of overflowing the database's integer type. [U]
PAGE_OFFSET_MAX: Final = 2**31 - 1

#: ``PATCH /v1/destinations/{id}`` follows JSON merge patch (RFC 7396): ``null`` removes an
#: optional member (``callback``, ``contactInformation``, ``name``, ``replyChannels``); ``null``
#: for a required one is 422 ``invalid-request-body``. [U] (``domain/destinations.py``)
PATCH_NULL_REMOVES: Final = True

#: ``GET /v1/destinations`` (own destinations): an envelope ``{count, offset, totalCount,
#: destinations: [owner view]}`` with the same paging as the submission list. [U]
DESTINATION_LIST_DEFAULT_LIMIT: Final = 100
DESTINATION_LIST_MAX_LIMIT: Final = 500

#: A service without ``regions`` counts as offered nationwide: only a ``send:region:DE`` scope
#: covers it. [U]
REGION_OF_SERVICE_WITHOUT_REGIONS: Final = "DE"

#: Uploaded attachments and submitted metadata/data must be JWEs whose wrapped key has at least
#: this many bytes (= a 4096-bit recipient key; the reference's "JWE ≥ 776 characters" rule). [U]
MIN_JWE_ENCRYPTED_KEY_BYTES: Final = 512

#: Listing (``GET /v1/submissions``) and fetching (``GET /v1/submissions/{id}``) count as
#: notification: the ZD writes ``notify-submission`` ``{notifyType: polling}`` at most once per
#: submission (only while it is ``submitted``), by analogy with ``notify-reply``. [U]
NOTIFY_ON_POLLING: Final = True

#: A submission may be fetched (with its attachments) while its content exists and it was not
#: rejected by the ZD (day 14); afterwards 409 ``submission-state-invalid``. Accepted or
#: receiver-rejected submissions stay fetchable until their content is deleted. [U]
FETCHABLE_STATUSES: Final = ("submitted", "forwarded", "accepted", "rejected")

#: Posted SETs may change a submission in these states (accept/reject/forward). [U]
DECIDABLE_STATUSES: Final = ("submitted", "forwarded")

#: ``GET /v1/destinations/{destinationId}/keys/{keyId}`` needs no access token (one public
#: client calls it without one) [S]; a token, if sent, is ignored there. [U]
KEYS_ARE_PUBLIC: Final = True

#: ``GET /v1/destinations/{id}`` for a client allowed to manage the destination returns the
#: owner view: the public view plus ``callback {url}`` (never the secret),
#: ``contactInformation`` and ``name``. A destination without an encryption key yet is only
#: visible to its managers (everyone else gets 404 ``destination-not-found``). [U]
OWNER_VIEW_FOR_MANAGERS: Final = True

#: The public view lists, per service, the service's own ``replyChannels`` or — when it has
#: none — the destination-wide ones; top-level ``replyChannels`` lists the channels common to
#: every service (settings from the first service). [U]
REPLY_CHANNELS_FALL_BACK_TO_DESTINATION: Final = True

#: New destinations (``POST /v1/destinations``) start as ``created`` (the body has no
#: ``status``); ``encryptionKid`` may be omitted when ``publicKeys`` hold exactly one encryption
#: key (it is then chosen). Answer 201 with the owner view and ``Location``. [U]
NEW_DESTINATION_STATUS: Final = "created"

#: ``inactive`` → ``decommissioned`` only after this waiting period ([C] 30 days); a
#: decommissioned destination can no longer be changed. [C]/[U]
DECOMMISSION_WAIT_DAYS: Final = 30

#: ``POST /v1/destinations/{id}/keys`` answers 201 with the stored public JWK and ``Location``.
#: [U]
ADD_KEY_STATUS_CODE: Final = 201

#: ``DELETE /v1/destinations/{id}`` only for destinations still in status ``created`` (they can
#: never have had submissions); others must be decommissioned (final deletion is the
#: operator's). [U]
DELETABLE_DESTINATION_STATUSES: Final = ("created",)

#: ``encryptionKid`` naming no registered encryption key of the destination is a request body
#: error: 422 ``invalid-request-body`` with a violation at ``$.encryptionKid``. [U]
UNKNOWN_ENCRYPTION_KID_PROBLEM: Final = "invalid-request-body"
