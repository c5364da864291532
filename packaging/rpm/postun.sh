# enforcerd %postun. $1: how many enforcerd packages remain (0 erase, 1 upgrade).
# Reloads systemd so that it forgets the removed unit (erase) or reads the new one. rpm has no
# purge: an edited enforcerd.yaml is kept as enforcerd.yaml.rpmsave, and profiles.d and
# trusted.d (created by %post, with the profiles and keys an operator added) and the state in
# /var/lib/enforcerd stay; remove /etc/enforcerd and /var/lib/enforcerd by hand to remove
# everything.
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || :
fi
exit 0
