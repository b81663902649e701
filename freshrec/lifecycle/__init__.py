"""Model versions after the build: `freshrec update` (fine-tune on the stored events, gate, a new
version in the repository with its item vectors in the store), `freshrec rollout` / `rollback`
(through a running Triton's repository API) and `freshrec versions`."""
