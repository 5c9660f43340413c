# MLflow's server image plus the PostgreSQL and S3 clients it needs for this compose file.
FROM ghcr.io/mlflow/mlflow:v3.17.2
RUN pip install --no-cache-dir "psycopg2-binary==2.9.*" "boto3==1.*"
