"""The link to the upper-level emergency-broadcast platform (GD/J 082/083, now GY/T
384/385-2023): its data packages in and out over HTTP POST.

- `fields`: every element name and code of the standards' messages, and the mapping of an
  `EBM` to the warning intake: the one place to correct when the standards' texts are at
  hand (docs/upstream.md marks what is guessed);
- `package`: the package codec (a tar of the message `EBDB_<EBDID>.xml` and its signature
  file `EBDS_EBDB_<EBDID>.xml`), read defensively;
- `signature`: signing what goes up and verifying what comes down, with configured keys;
- `service`: answering packages (receipts, state requests) and reporting up.
"""
