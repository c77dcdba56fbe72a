-- Live mounts: every change of backend_mounts notifies the executors listening on the channel
-- '<schema>.backend_mounts', which reload their mounts (they also reload periodically, in case a
-- notification is missed while a listener reconnects).
CREATE FUNCTION notify_backend_mounts_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.backend_mounts', TG_OP);
    RETURN NULL;
END;
$$;

CREATE TRIGGER backend_mounts_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON backend_mounts
    FOR EACH STATEMENT EXECUTE FUNCTION notify_backend_mounts_changed();
