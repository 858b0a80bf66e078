# Boot probe: reaching this line means the kernel booted and ran /init.
echo "@@GRAFT probe ok"
