"""The metrics both methods share: the FID Inception network (`inception`), FID, KID, CLIPSIM, HAND-CONF
and the hand crops (`metrics`), DAP and MPJPE (`pose_metrics`), and the checks and number formatting of
both evaluations (`common`). Each method's evaluation lives in its own package (`hand1000.evaluate`,
`twostage.evaluate`); the run's report page is `handsynth.report`."""
