-- flowcore-store schema v6 (SQLite): a session records the cohort it was created in (such as
-- the A/B test variant its contact was assigned), which metrics count sessions by. Written
-- once, with the session: no index holds it, so a turn's update stays as it was.
ALTER TABLE sessions ADD COLUMN cohort TEXT;
