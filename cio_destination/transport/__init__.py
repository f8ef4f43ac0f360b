"""Everything that talks HTTP to Customer.io, one concern per module:

* `answers`: what an answer means (`classify`, the one place statuses are classified) and what
  of Customer.io's text a rejection may keep (`ServerText`);
* `api`: one API with its auth, shared rate limit and retries (`ApiClient`, `RetryPolicy`);
* `track`: the Track API: the per-load preflight and `/api/v2/batch` (`TrackClient`);
* `app`: the App API's transactional sends (`AppClient`);
* `sender`: the Track API's entries packed into bodies, several requests in flight (`Sender`);
* `emails`: transactional sends at most once per row, through the send ledger (`EmailSender`);
* `ratelimit`: one request rate shared by every thread (`RateLimiter`);
* `shared_budget`: that rate shared by every process through `rate_limit_url`
  (`SharedRateLimiter`, on Redis or PostgreSQL);
* `regions`: Customer.io's regions, their hosts and the region a workspace is sent to;
* `results`: what sending did (`SendResult`, `SendStats`);
* `workspace`: all of the above shared per destination config, and the preflight of each load
  (`Workspace`, `workspace_for`).
"""
