"""``micronet-search gc --study NAME``: remove what a study's artifact folder holds that no trial or study of the
storage references any more (resume checkpoints of ended trials, cut-off writes, probes); ``--dry-run`` lists it."""

from __future__ import annotations

from search.study.storage import ENV_STORAGE


def add_parser(commands) -> None:
    p = commands.add_parser("gc", help="remove unreferenced files from a study's artifact folder", description=__doc__)
    p.add_argument("--storage", help=f"storage URL (or set {ENV_STORAGE})")
    p.add_argument("--study", required=True, help="study name (every study sharing its artifact folder counts)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p.add_argument("--bases", action="store_true",
                   help="also remove bases no trial of these studies names (bases are kept for later studies)")
    p.add_argument("--logs", action="store_true",
                   help="also remove the local workers' logs of these studies (studies/logs/<study>/ under the "
                        "working directory), unless a trial is running")
    p.set_defaults(handler=run)


def run(args) -> int:
    from search import optuna_compat as compat
    from search.study.cleanup import plan, remove
    from search.study.storage import given_storage, load_existing_study

    study = load_existing_study(args.storage, args.study)
    cleanup = plan(compat.storage_of(study), args.study, bases=args.bases, url=given_storage(args.storage),
                   logs=args.logs)
    verb = "would remove" if args.dry_run else "removed"
    for path in cleanup.files:
        print(f"{verb} {path}")
    size = cleanup.size
    freed = 0 if args.dry_run else remove(cleanup)
    extra = "".join(f", {len(items)} {what}" for items, what in ((cleanup.locks, "lock file(s) of stored bases"),
                                                                  (cleanup.logs, "worker log(s)")) if items)
    print(f"{cleanup.folder}: {len(cleanup.kept)} referenced artifact(s) kept (studies {', '.join(cleanup.studies)}); "
          f"{len(cleanup.unreferenced)} unreferenced file(s){extra}, {(size if args.dry_run else freed) / 1e6:.1f} MB "
          f"{verb}")
    return 0
