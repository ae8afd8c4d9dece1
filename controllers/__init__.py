"""Sample Kubernetes controllers that exercise petcd through a real kube-apiserver.

Runtime (client-go's shapes, on the official `kubernetes` client, sync, in threads):
    kubeclient   config loading (kubeconfig / in-cluster) and a dict-in/dict-out request layer
    informer     list + watch with resourceVersion, bookmarks, resume, relist on 410 Gone
    workqueue    de-duplicating, rate-limited work queue (client-go's semantics)
    retry        retry_on_conflict (client-go's RetryOnConflict), reconnect backoff
    checkpoint   where a restarted controller resumes its watches (file or ConfigMap)
    runtime      Controller: informers → queue → workers, graceful shutdown, CLI flags
    metrics, log Prometheus metrics on an optional port, JSON-lines logs

Controllers (python -m controllers.<name> --kubeconfig PATH, or controllers.main <name>):
    counter        Counter status.count up to spec.target, conditional writes, no lost update
    naive_counter  the same, last-write-wins (no resourceVersion): loses updates
    replicator     ReplicatedConfigMap: copies of a ConfigMap in other namespaces
    rollout_stepper  Deployments through a list of images, against the deployment controller's
                     own writes: real 409s, each step applied exactly once
"""
